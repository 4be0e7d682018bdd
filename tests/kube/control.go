package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
)

// serveControl answers the test's requests to stop or start the API server and to compact etcd.
// Each request returns only when the action is done.
func serveControl(ctx context.Context, l net.Listener, api *apiServer, etcd *testEtcd) error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /apiserver/stop", func(w http.ResponseWriter, r *http.Request) {
		api.stop()
		reply(w, http.StatusOK, map[string]any{"apiserver": "stopped"})
	})
	mux.HandleFunc("POST /apiserver/start", func(w http.ResponseWriter, r *http.Request) {
		if err := api.start(ctx); err != nil {
			reply(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
			return
		}
		reply(w, http.StatusOK, map[string]any{"apiserver": "ready"})
	})
	mux.HandleFunc("POST /etcd/compact", func(w http.ResponseWriter, r *http.Request) {
		revision, err := etcd.compact(r.Context())
		if err != nil {
			reply(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
			return
		}
		reply(w, http.StatusOK, map[string]any{"revision": revision})
	})
	return http.Serve(l, mux)
}

func reply(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
