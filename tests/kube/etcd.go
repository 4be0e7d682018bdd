package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"k8s.io/apiserver/pkg/storage/etcd3"
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

// compactRevKey is where kube-apiserver's compactors record the last compacted revision; the
// API server watches it to learn of a compaction (and then drops older watch-cache snapshots).
const compactRevKey = "compact_rev_key"

// compact compacts etcd at its current revision exactly as kube-apiserver's own periodic
// compactor does (etcd3.Compact: compare-and-swap on compact_rev_key, then compact), so the
// running API server learns of it: afterwards a list or watch from an older resourceVersion
// gets 410 Gone, from etcd at once and from the watch cache within its poll period (15 s).
func (e *testEtcd) compact(ctx context.Context) (int64, error) {
	for attempt := 0; attempt < 5; attempt++ {
		resp, err := e.client.Get(ctx, compactRevKey)
		if err != nil {
			return 0, err
		}
		var version int64
		if len(resp.Kvs) > 0 {
			version = resp.Kvs[0].Version
		}
		revision := resp.Header.Revision
		_, _, compacted, err := etcd3.Compact(ctx, e.client, version, revision)
		if err != nil {
			return 0, err
		}
		if compacted == revision {
			return revision, nil
		}
		// The API server's compactor took its turn in between; read again.
	}
	return 0, errors.New("lost the compact_rev_key race five times")
}

func (e *testEtcd) close() {
	e.client.Close()
	e.server.Close()
}
