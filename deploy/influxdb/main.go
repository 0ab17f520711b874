// Command influxd builds InfluxDB OSS 2.7 from its Go module as a library.
//
// `go install github.com/influxdata/influxdb/v2/cmd/influxd@v2.7.12` is refused
// because InfluxDB's go.mod carries a `replace` directive; a module of our own
// with the same `replace` line can import the launcher and build the same server.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/influxdata/influxdb/v2"
	"github.com/influxdata/influxdb/v2/cmd/influxd/launcher"
	_ "github.com/influxdata/influxdb/v2/tsdb/engine/tsm1"
	_ "github.com/influxdata/influxdb/v2/tsdb/index/tsi1"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"
)

// version is set by the build script with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	influxdb.SetBuildInfo(version, "civic-iot", time.Now().UTC().Format(time.RFC3339))
	rootCmd, err := launcher.NewInfluxdCommand(context.Background(), viper.New())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	rootCmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the influxd server version",
		Run: func(*cobra.Command, []string) {
			fmt.Printf("InfluxDB %s (civic-iot build)\n", version)
		},
	})
	rootCmd.SilenceUsage = true
	if err := rootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}
