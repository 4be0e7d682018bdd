// Command kube-testenv runs a real etcd and kube-apiserver on 127.0.0.1 for Portico's tests.
//
//	kube-testenv --kubeconfig PATH [--lifeline] [--v N] [--apiserver-arg=--FLAG=VALUE ...]
//
// etcd runs embedded in this process; kube-apiserver runs as a child process (this same binary,
// started with the first argument "kube-apiserver"), so a test can stop and restart the API
// server while etcd and its data live on. Once /readyz answers it writes an admin kubeconfig to
// PATH and prints one JSON line on stdout (see readyRecord), then serves a control port:
//
//	POST /apiserver/stop   stop the API server (SIGTERM, then SIGKILL after 30 s); etcd keeps running
//	POST /apiserver/start  start it again on the same port with the same certificates and keys
//	POST /etcd/compact     compact etcd at its current revision; answers {"revision":N}
//
// SIGTERM or SIGINT (and, with --lifeline, stdin closing) stops both and removes the temp dir.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// readyRecord is the one line printed on stdout when the control plane answers.
type readyRecord struct {
	Ready      bool   `json:"ready"`
	Kubeconfig string `json:"kubeconfig"`
	Server     string `json:"server"`
	Etcd       string `json:"etcd"`
	Control    string `json:"control"`
	CA         string `json:"ca"`
	Token      string `json:"token"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == apiserverMode {
		os.Exit(runAPIServer(os.Args[2:]))
	}
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "kube-testenv: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "where to write the admin kubeconfig (required)")
	lifeline := flag.Bool("lifeline", false, "stop when stdin closes (so a killed test leaves nothing running)")
	verbosity := flag.Int("v", 0, "kube-apiserver log verbosity")
	// Extra kube-apiserver flags, after ours (the last of a repeated flag wins), e.g. the chaos
	// harness's --watch-cache-sizes so that some watches are served by etcd itself.
	var extra stringList
	flag.Var(&extra, "apiserver-arg", "an extra kube-apiserver flag (repeatable), e.g. --apiserver-arg=--watch-cache-sizes=ingresses.networking.k8s.io#0")
	flag.Parse()
	if *kubeconfig == "" {
		return errors.New("--kubeconfig PATH is required")
	}
	kubeconfigPath, err := filepath.Abs(*kubeconfig)
	if err != nil {
		return err
	}

	// Stop requests are caught before anything starts, so one during start-up (which can take
	// minutes on a loaded machine) also stops at once and cleans up.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-signals
		cancel(fmt.Errorf("%v", sig))
	}()
	if *lifeline {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			cancel(errors.New("stdin closed"))
		}()
	}

	dir, err := os.MkdirTemp("", "kube-testenv-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	pki, err := writePKI(dir)
	if err != nil {
		return fmt.Errorf("certificates and keys: %w", err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcd, err := startEtcd(filepath.Join(dir, "etcd"), ports[0], ports[1])
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.close()

	api, err := newAPIServer(dir, pki, etcd.clientURL, ports[2], *verbosity, extra)
	if err != nil {
		return err
	}
	defer api.stop()
	if err := api.start(ctx); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	if err := writeKubeconfig(kubeconfigPath, api.url, pki); err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}

	controlListener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	controlErr := make(chan error, 1)
	go func() { controlErr <- serveControl(ctx, controlListener, api, etcd) }()

	record, err := json.Marshal(readyRecord{
		Ready:      true,
		Kubeconfig: kubeconfigPath,
		Server:     api.url,
		Etcd:       etcd.clientURL,
		Control:    "http://" + controlListener.Addr().String(),
		CA:         pki.caFile,
		Token:      pki.adminToken,
	})
	if err != nil {
		return err
	}
	fmt.Println(string(record))

	select {
	case <-ctx.Done():
		fmt.Fprintf(os.Stderr, "kube-testenv: %v, stopping\n", context.Cause(ctx))
		return nil
	case err := <-api.died:
		// Fail closed: an API server that dies unasked is an error the test must see.
		return err
	case err := <-controlErr:
		return fmt.Errorf("control port: %w", err)
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, " ") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// freePorts asks the kernel for n distinct free ports on 127.0.0.1. They are released before
// use, so another process could take one in between; on a test machine that is rare enough.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	listeners := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		_, port, _ := net.SplitHostPort(l.Addr().String())
		p, _ := strconv.Atoi(port)
		ports = append(ports, p)
	}
	return ports, nil
}

// waitFor polls check every 100 ms until it returns nil, fail returns an error, or timeout passes.
func waitFor(timeout time.Duration, check func() error, fail func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if ferr := fail(); ferr != nil {
			return ferr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
