// Package nft applies nftables scripts with nft(8): each script is one
// transaction, so a table is replaced whole or not at all. The agent owns a
// few tables (mesh.GuardTable, access.TableName), each replaced by a script
// that starts with Reset and removed with Delete.
package nft

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Run applies script (nft -f -), waiting at most 10 s.
func Run(script string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Reset is the start of a script that replaces table (family family,
// "ip" or "inet"): it declares the table, so the delete that follows
// succeeds on a fresh host, and deletes it.
func Reset(family, table string) string {
	return fmt.Sprintf("table %[1]s %[2]s\ndelete table %[1]s %[2]s\n", family, table)
}

// Delete is the script that removes table, and does nothing if it is not
// there.
func Delete(family, table string) string { return Reset(family, table) }
