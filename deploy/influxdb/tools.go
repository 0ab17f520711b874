//go:build tools

// Package tools pins the pkg-config wrapper that builds libflux (Rust) with cargo.
package tools

import _ "github.com/influxdata/pkg-config"
