//go:build !jepsen

package httpapi

import "net/http"

// testRoutes: the test register's routes exist only in jepsen builds
// (register_jepsen.go).
func (l *local) testRoutes(*http.ServeMux) {}
