package lab_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// The UDP programs the NAT tests run inside namespaces: this test binary,
// re-executed with RUNOS_LAB_HELPER naming the role. Each role is bounded in
// time and exits by itself.
const helperEnv = "RUNOS_LAB_HELPER"

// helper returns the argv that runs role inside a namespace, with env
// ("K=V") added to the environment.
func helper(t *testing.T, role string, env ...string) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The race runtime sleeps a second at exit unless told not to.
	args := []string{"env", helperEnv + "=" + role, "GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0"}
	args = append(args, env...)
	return append(args, exe, "-test.run=^TestHelperProcess$")
}

// TestHelperProcess is not a test: it is the entry point of the helper roles.
func TestHelperProcess(t *testing.T) {
	role := os.Getenv(helperEnv)
	if role == "" {
		return
	}
	var err error
	switch role {
	case "reflect":
		err = reflect(os.Getenv("LISTEN"), 60*time.Second)
	case "discover":
		err = discover(os.Getenv("LOCAL"), os.Getenv("SERVER"))
	case "punch":
		var d time.Duration
		if d, err = time.ParseDuration(os.Getenv("TIMEOUT")); err == nil {
			err = punch(os.Getenv("LOCAL"), os.Getenv("PEER"), d)
		}
	case "kube-standin":
		err = kubeStandin(os.Getenv("NODE"), os.Getenv("STATE"), os.Getenv("MNTDIR"), os.Getenv("SYSCTLS") == "1")
	case "kube-crash":
		err = kubeCrash(t, os.Getenv("MNTDIR"))
	default:
		err = fmt.Errorf("unknown helper role %q", role)
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// reflect answers every datagram with "MAPPED <source ip:port>", like a STUN
// server's XOR-MAPPED-ADDRESS, for at most d.
func reflect(listen string, d time.Duration) error {
	c, err := net.ListenPacket("udp4", listen)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println("LISTENING", c.LocalAddr())
	_ = c.SetDeadline(time.Now().Add(d))
	buf := make([]byte, 1500)
	for {
		_, from, err := c.ReadFrom(buf)
		if err != nil {
			return nil // deadline: done
		}
		if _, err := c.WriteTo([]byte("MAPPED "+from.String()), from); err != nil {
			return err
		}
	}
}

// discover asks the reflector at server what local looks like from outside
// and prints "MAPPED ip:port".
func discover(local, server string) error {
	c, err := net.ListenPacket("udp4", local)
	if err != nil {
		return err
	}
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for range 15 { // 3 s
		if _, err := c.WriteTo([]byte("who"), dst); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := c.ReadFrom(buf)
		if err == nil && strings.HasPrefix(string(buf[:n]), "MAPPED ") {
			fmt.Println(string(buf[:n]))
			return nil
		}
	}
	return fmt.Errorf("no answer from %s", server)
}

// punch sends to peer every 50 ms from local, both sides at once. It sends
// "hello" until it hears the peer, then "ack". It succeeds once it gets an
// ack (so both directions work), after sending acks a little longer for the
// peer's sake; it fails after d.
func punch(local, peer string, d time.Duration) error {
	c, err := net.ListenPacket("udp4", local)
	if err != nil {
		return err
	}
	defer c.Close()
	want, err := netip.ParseAddrPort(peer)
	if err != nil {
		return err
	}
	dst := net.UDPAddrFromAddrPort(want)
	deadline := time.Now().Add(d)
	var heard bool
	var linger time.Time // set once acked
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		msg := "hello"
		if heard {
			msg = "ack"
		}
		if _, err := c.WriteTo([]byte(msg), dst); err != nil {
			return err
		}
		if !linger.IsZero() && time.Now().After(linger) {
			fmt.Println("PUNCHED")
			return nil
		}
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			got := from.(*net.UDPAddr).AddrPort()
			if netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != want {
				fmt.Println("STRAY from", from)
				continue
			}
			if !heard {
				fmt.Println("HEARD", from)
			}
			heard = true
			if string(buf[:n]) == "ack" && linger.IsZero() {
				linger = time.Now().Add(300 * time.Millisecond)
			}
		}
	}
	if heard {
		return fmt.Errorf("one-way: heard %s but got no ack", peer)
	}
	return fmt.Errorf("timeout: nothing from %s", peer)
}
