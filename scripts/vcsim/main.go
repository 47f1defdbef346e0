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
	"strings"
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
	control := flag.String("control", "", "a file of lines 'disconnect HOST', 'connect HOST' or 'return HOST' "+
		"(connected again after a power cycle: its VMs powered off), applied at each SIGUSR1 (a host lost, or "+
		"back, while the simulator runs)")
	flag.Parse()

	model := simulator.VPX()
	model.ClusterHost = *hosts
	model.Host = *standalone
	model.Machine = *machines
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: creating the inventory: %v", err)
	}
	shareMounts()
	if *disconnect != "" {
		if !setConnected(*disconnect, false, false) {
			log.Fatalf("vcsim: no host %q to disconnect", *disconnect)
		}
	}
	if *control != "" {
		go follow(*control)
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

// shareMounts makes each datastore's host mounts (Datastore.host) name every host that lists it
// (HostSystem.datastore), as a vCenter shows a datastore its hosts share. The simulator's model mounts each
// LocalDS_n on every host of the datacenter but keeps only the last host's mount on the datastore itself.
func shareMounts() {
	for _, e := range simulator.Map.All("HostSystem") {
		host := e.(*simulator.HostSystem)
		for _, ref := range host.Datastore {
			ds := simulator.Map.Get(ref).(*simulator.Datastore)
			simulator.Map.WithLock(ds, func() {
				for _, m := range ds.Host {
					if m.Key == host.Self {
						return
					}
				}
				ds.Host = append(ds.Host, types.DatastoreHostMount{Key: host.Self, MountInfo: types.HostMountInfo{
					AccessMode: string(types.HostMountModeReadWrite), Mounted: types.NewBool(true),
					Accessible: types.NewBool(true)}})
			})
		}
	}
}

// setConnected marks the named host and its VMs disconnected (their power state stays the last one seen), or
// connected again (``off``: after a power cycle, its VMs powered off); false if there is no such host.
func setConnected(name string, connected bool, off bool) bool {
	hostState, vmState := types.HostSystemConnectionStateDisconnected, types.VirtualMachineConnectionStateDisconnected
	if connected {
		hostState, vmState = types.HostSystemConnectionStateConnected, types.VirtualMachineConnectionStateConnected
	}
	for _, e := range simulator.Map.All("HostSystem") {
		host := e.(*simulator.HostSystem)
		if host.Name != name {
			continue
		}
		simulator.Map.WithLock(host, func() {
			host.Runtime.ConnectionState = hostState
			host.Summary.Runtime.ConnectionState = hostState
		})
		for _, ref := range host.Vm {
			vm := simulator.Map.Get(ref).(*simulator.VirtualMachine)
			simulator.Map.WithLock(vm, func() {
				vm.Runtime.ConnectionState = vmState
				vm.Summary.Runtime.ConnectionState = vmState
				if off {
					vm.Runtime.PowerState = types.VirtualMachinePowerStatePoweredOff
					vm.Summary.Runtime.PowerState = types.VirtualMachinePowerStatePoweredOff
				}
			})
		}
		return true
	}
	return false
}

// follow applies the control file's lines at each SIGUSR1, then truncates it; each answer goes to stderr.
func follow(path string) {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGUSR1)
	for range signals {
		data, err := os.ReadFile(path)
		if err != nil {
			log.Printf("vcsim: control file: %v", err)
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			verb, name, _ := strings.Cut(strings.TrimSpace(line), " ")
			ok := (verb == "disconnect" || verb == "connect" || verb == "return") &&
				setConnected(name, verb != "disconnect", verb == "return")
			log.Printf("vcsim: control %q applied: %v", line, ok)
		}
		_ = os.WriteFile(path+".done", data, 0o600)
	}
}
