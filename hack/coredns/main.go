// Command coredns is CoreDNS with only the plugins the local cluster's DNS uses.
//
// CoreDNS's own main imports every plugin it ships (cloud DNS providers, etcd, ...), which
// triples the first build on two cores. Plugins register themselves when imported, and the
// server orders them by CoreDNS's directive list, so this main is CoreDNS's with a shorter
// import list.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
)

func main() {
	coremain.Run()
}
