// Command vcsim serves govmomi's vCenter simulator (simulator.VPX) on one address, for metavmm's tests.
//
// Debian packages govmomi's simulator library but not its vcsim command; this is the small part of it
// the tests need: a VPX inventory, HTTPS with the simulator's self-signed certificate, fixed
// credentials, and a READY line on stdout once it answers. SIGTERM removes the datastores' temp dirs.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8989", "address to serve on (port 0: any free port)")
	username := flag.String("username", "user", "the one user name the simulator accepts")
	password := flag.String("password", "pass", "its password")
	hosts := flag.Int("cluster-hosts", 3, "hosts in the cluster")
	standalone := flag.Int("standalone-hosts", 1, "standalone hosts")
	machines := flag.Int("vms", 1, "VMs per host created with the inventory")
	disconnect := flag.String("disconnect", "", "a host to show disconnected, with its VMs, as a vCenter shows "+
		"a host it lost (the simulator has no DisconnectHost_Task)")
	flag.Parse()

	model := simulator.VPX()
	model.ClusterHost = *hosts
	model.Host = *standalone
	model.Machine = *machines
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: creating the inventory: %v", err)
	}
	if *disconnect != "" {
		disconnectHost(*disconnect)
	}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	model.Service.TLS = new(tls.Config)
	server := model.Service.NewServer()

	fmt.Printf("READY %s://%s%s\n", server.URL.Scheme, server.URL.Host, server.URL.Path)
	_ = os.Stdout.Sync()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	server.Close()
	model.Remove()
}

// disconnectHost marks the named host and its VMs disconnected; their power state stays the last one seen.
func disconnectHost(name string) {
	for _, e := range simulator.Map.All("HostSystem") {
		host := e.(*simulator.HostSystem)
		if host.Name != name {
			continue
		}
		host.Runtime.ConnectionState = types.HostSystemConnectionStateDisconnected
		host.Summary.Runtime.ConnectionState = types.HostSystemConnectionStateDisconnected
		for _, ref := range host.Vm {
			vm := simulator.Map.Get(ref).(*simulator.VirtualMachine)
			vm.Runtime.ConnectionState = types.VirtualMachineConnectionStateDisconnected
			vm.Summary.Runtime.ConnectionState = types.VirtualMachineConnectionStateDisconnected
		}
		return
	}
	log.Fatalf("vcsim: no host %q to disconnect", name)
}
