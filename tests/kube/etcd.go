package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
)

// testEtcd is a single-member etcd embedded in this process, with its data in a temp dir.
type testEtcd struct {
	server    *embed.Etcd
	client    *clientv3.Client
	clientURL string
}

func startEtcd(dir string, clientPort, peerPort int) (*testEtcd, error) {
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg := embed.NewConfig()
	cfg.Name = "kube-testenv"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	// Test data is thrown away at exit; fsync would only slow every write down.
	cfg.UnsafeNoFsync = true

	server, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-server.Server.ReadyNotify():
	case err := <-server.Err():
		server.Close()
		return nil, err
	case <-time.After(time.Minute):
		server.Close()
		return nil, errors.New("not ready after a minute")
	}
	return &testEtcd{server: server, client: v3client.New(server.Server), clientURL: clientURL.String()}, nil
}

// compact compacts the whole keyspace at the current revision, physically, so every older
// resourceVersion is gone: a watch or list from one must get 410 Gone from the API server.
func (e *testEtcd) compact(ctx context.Context) (int64, error) {
	resp, err := e.client.Get(ctx, "kube-testenv/compact-probe")
	if err != nil {
		return 0, err
	}
	revision := resp.Header.Revision
	_, err = e.client.Compact(ctx, revision, clientv3.WithCompactPhysical())
	if errors.Is(err, rpctypes.ErrCompacted) {
		// Nothing was written since the last compaction at this revision.
		err = nil
	}
	return revision, err
}

func (e *testEtcd) close() {
	e.client.Close()
	e.server.Close()
}
