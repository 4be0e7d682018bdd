package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // as cmd/kube-apiserver: JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // as cmd/kube-apiserver: client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // as cmd/kube-apiserver: version metric
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// apiserverMode as the first argument makes this binary kube-apiserver itself.
const apiserverMode = "kube-apiserver"

// runAPIServer is cmd/kube-apiserver's main: the real command, flags and signal handling.
func runAPIServer(args []string) int {
	command := app.NewAPIServerCommand()
	command.SetArgs(args)
	return cli.Run(command)
}

// apiServer supervises kube-apiserver as a child process. The port, certificates, token file
// and service-account keys are fixed at construction, so a restarted server is the same server
// to every client and every token it minted stays valid.
type apiServer struct {
	exe    string
	args   []string
	url    string
	token  string
	client *http.Client
	// died receives an error when the child exits without being asked to.
	died chan error

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	stopping bool
}

func newAPIServer(dir string, pki *testPKI, etcdURL string, port, verbosity int, extra []string) (*apiServer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(pki.caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("CA certificate does not parse")
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file=" + pki.servingCertFile,
		"--tls-private-key-file=" + pki.servingKeyFile,
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--authorization-mode=RBAC",
		"--token-auth-file=" + pki.tokenFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.saKeyFile,
		"--service-account-signing-key-file=" + pki.saKeyFile,
		"--service-cluster-ip-range=10.0.0.0/24",
		// The kubernetes Service's Endpoints may not point at loopback; with one server on
		// 127.0.0.1 there is nothing to reconcile, only an error logged every 10 s.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		fmt.Sprintf("--v=%d", verbosity),
	}
	args = append(args, extra...)
	return &apiServer{
		exe:    exe,
		args:   args,
		url:    fmt.Sprintf("https://127.0.0.1:%d", port),
		token:  pki.adminToken,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}},
		died:   make(chan error, 1),
	}, nil
}

// start runs the child and returns once /readyz answers 200 and the default namespace exists,
// or with an error if the child exits or ctx ends first (the child is then stopped).
func (a *apiServer) start(ctx context.Context) error {
	a.mu.Lock()
	if a.cmd != nil {
		a.mu.Unlock()
		return errors.New("already running")
	}
	cmd := exec.Command(a.exe, append([]string{apiserverMode}, a.args...)...)
	// stdout carries only the ready record; the server's logs go with ours to stderr.
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	// If this supervisor is SIGKILLed, the API server must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		a.mu.Unlock()
		return err
	}
	exited := make(chan struct{})
	a.cmd, a.exited = cmd, exited
	a.mu.Unlock()

	go func() {
		err := cmd.Wait()
		a.mu.Lock()
		asked := a.stopping
		a.cmd = nil
		a.mu.Unlock()
		close(exited)
		if !asked {
			select {
			case a.died <- fmt.Errorf("kube-apiserver exited unasked: %v", err):
			default:
			}
		}
	}()

	failed := func() error {
		select {
		case <-exited:
			return errors.New("kube-apiserver exited during start-up (its log is above)")
		case <-ctx.Done():
			return fmt.Errorf("stopped during start-up: %w", context.Cause(ctx))
		default:
			return nil
		}
	}
	ready := func() error {
		for _, path := range []string{"/readyz", "/api/v1/namespaces/default"} {
			if err := a.get(path); err != nil {
				return err
			}
		}
		return nil
	}
	if err := waitFor(3*time.Minute, ready, failed); err != nil {
		a.stop()
		return err
	}
	return nil
}

func (a *apiServer) get(path string) error {
	req, err := http.NewRequest(http.MethodGet, a.url+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return nil
}

// stop sends SIGTERM (kube-apiserver's graceful shutdown) and waits for the exit; a server
// still running after 30 s is killed. Stopping a stopped server does nothing.
func (a *apiServer) stop() {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	if cmd == nil {
		a.mu.Unlock()
		return
	}
	a.stopping = true
	a.mu.Unlock()

	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	a.mu.Lock()
	a.stopping = false
	a.mu.Unlock()
	// The exit of a server we stopped is not a death to report.
	select {
	case <-a.died:
	default:
	}
}
