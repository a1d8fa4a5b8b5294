package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"github.com/pingcap/tidb/pkg/util/codec"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// testCluster starts the servers in-process on free ports, with clients.
func testCluster(t *testing.T) (*cluster, pdpb.PDClient, tikvpb.TikvClient) {
	t.Helper()
	return testClusterWith(t, options{})
}

// testClusterWith is testCluster with options (listen addresses default to
// free ports on 127.0.0.1).
func testClusterWith(t *testing.T, o options) (*cluster, pdpb.PDClient, tikvpb.TikvClient) {
	t.Helper()
	if o.pd == "" {
		o.pd = "127.0.0.1:0"
	}
	if o.tikv == "" {
		o.tikv = "127.0.0.1:0"
	}
	c, err := start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	dial := func(addr string) *grpc.ClientConn {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	return c, pdpb.NewPDClient(dial(c.pd)), tikvpb.NewTikvClient(dial(c.tikv))
}

func reqHeader() *pdpb.RequestHeader { return &pdpb.RequestHeader{ClusterId: clusterID} }

// regionContext is a request context for the region PD says holds key.
func regionContext(t *testing.T, pd pdpb.PDClient, key []byte) *kvrpcpb.Context {
	t.Helper()
	region, err := pd.GetRegion(context.Background(), &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return &kvrpcpb.Context{RegionId: region.Region.Id, RegionEpoch: region.Region.RegionEpoch, Peer: region.Leader}
}

// tsoSource hands out PD timestamps, one a call, over one TSO stream.
func tsoSource(t *testing.T, pd pdpb.PDClient) func() uint64 {
	t.Helper()
	stream, err := pd.Tso(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return func() uint64 {
		if err := stream.Send(&pdpb.TsoRequest{Header: reqHeader(), Count: 1}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return uint64(resp.Timestamp.Physical)<<18 + uint64(resp.Timestamp.Logical)
	}
}

func TestPDDescribesTheStore(t *testing.T) {
	c, pd, _ := testCluster(t)
	ctx := context.Background()

	members, err := pd.GetMembers(ctx, &pdpb.GetMembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if members.Header.ClusterId != clusterID || members.Leader.ClientUrls[0] != "http://"+c.pd {
		t.Fatalf("members: %v", members)
	}

	stores, err := pd.GetAllStores(ctx, &pdpb.GetAllStoresRequest{Header: reqHeader()})
	if err != nil || len(stores.Stores) != 1 || stores.Stores[0].Address != c.tikv {
		t.Fatalf("stores: %v %v", stores, err)
	}
	storeID := stores.Stores[0].Id

	region, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: []byte("any")})
	if err != nil || region.Header.Error != nil || region.Leader.StoreId != storeID {
		t.Fatalf("region: %v %v", region, err)
	}
	// One region: the one ScanRegions lists, and the one for the empty key.
	scan, err := pd.ScanRegions(ctx, &pdpb.ScanRegionsRequest{Header: reqHeader()})
	if err != nil || len(scan.Regions) != 1 || scan.Regions[0].Region.Id != region.Region.Id {
		t.Fatalf("scan regions: %v %v", scan, err)
	}
	first, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader()})
	if err != nil || first.Region.GetId() != region.Region.Id {
		t.Fatalf("region of the empty key: %v %v", first, err)
	}
	byID, err := pd.GetRegionByID(ctx, &pdpb.GetRegionByIDRequest{Header: reqHeader(), RegionId: region.Region.Id})
	if err != nil || byID.Region.GetRegionEpoch().GetVersion() != region.Region.RegionEpoch.Version {
		t.Fatalf("region by id: %v %v", byID, err)
	}

	// Unknown ids are errors in the header, as PD answers them.
	missing, err := pd.GetRegionByID(ctx, &pdpb.GetRegionByIDRequest{Header: reqHeader(), RegionId: 999999})
	if err != nil || missing.Header.Error.GetType() != pdpb.ErrorType_REGION_NOT_FOUND {
		t.Fatalf("unknown region: %v %v", missing, err)
	}
	noStore, err := pd.GetStore(ctx, &pdpb.GetStoreRequest{Header: reqHeader(), StoreId: 999999})
	if err != nil || noStore.Header.Error == nil {
		t.Fatalf("unknown store: %v %v", noStore, err)
	}
	if _, err := pd.GetAllStores(ctx, &pdpb.GetAllStoresRequest{Header: &pdpb.RequestHeader{ClusterId: 7}}); err == nil {
		t.Fatal("another cluster's request was answered")
	}
}

func TestTSOHandsOutIncreasingBatches(t *testing.T) {
	_, pd, _ := testCluster(t)
	stream, err := pd.Tso(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for _, count := range []uint32{1, 5, 64, 2} {
		if err := stream.Send(&pdpb.TsoRequest{Header: reqHeader(), Count: count}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		ts := resp.Timestamp
		// The response is the last of `count` timestamps on one millisecond.
		first := uint64(ts.Physical)<<18 + uint64(ts.Logical) - uint64(count) + 1
		if resp.Count != count || ts.Logical+1 < int64(count) || first <= last {
			t.Fatalf("count %d: got %v after %d", count, resp, last)
		}
		if drift := time.Since(time.UnixMilli(ts.Physical)); drift > time.Second || drift < -time.Second {
			t.Fatalf("physical is not the wall clock: %v", drift)
		}
		last = first + uint64(count) - 1
	}
}

func TestEmptyValuesAreValues(t *testing.T) {
	_, pd, kv := testCluster(t)
	ctx := context.Background()
	rctx := regionContext(t, pd, []byte("k"))
	tso := tsoSource(t, pd)

	key := []byte("empty")
	startTS := tso()
	pw, err := kv.KvPrewrite(ctx, &kvrpcpb.PrewriteRequest{
		Context:      rctx,
		Mutations:    []*kvrpcpb.Mutation{{Op: kvrpcpb.Op_Put, Key: key, Value: []byte{}}},
		PrimaryLock:  key,
		StartVersion: startTS,
		LockTtl:      3000,
	})
	if err != nil || pw.RegionError != nil || len(pw.Errors) != 0 {
		t.Fatalf("prewrite: %v %v", pw, err)
	}
	cm, err := kv.KvCommit(ctx, &kvrpcpb.CommitRequest{Context: rctx, Keys: [][]byte{key}, StartVersion: startTS, CommitVersion: tso()})
	if err != nil || cm.RegionError != nil || cm.Error != nil {
		t.Fatalf("commit: %v %v", cm, err)
	}

	readTS := tso()
	got, err := kv.KvGet(ctx, &kvrpcpb.GetRequest{Context: rctx, Key: key, Version: readTS})
	if err != nil || got.NotFound || len(got.Value) != 0 {
		t.Fatalf("get of an empty value: %v %v", got, err)
	}
	absent, err := kv.KvGet(ctx, &kvrpcpb.GetRequest{Context: rctx, Key: []byte("absent"), Version: readTS})
	if err != nil || !absent.NotFound {
		t.Fatalf("get of an absent key: %v %v", absent, err)
	}
	scan, err := kv.KvScan(ctx, &kvrpcpb.ScanRequest{Context: rctx, StartKey: []byte("e"), EndKey: []byte("f"), Limit: 10, Version: readTS})
	if err != nil || len(scan.Pairs) != 1 || len(scan.Pairs[0].Value) != 0 {
		t.Fatalf("scan: %v %v", scan, err)
	}
}

// A lock met by a read names its primary, not every key of its
// transaction: TiKV keeps the secondaries only for async commit (in the
// primary's lock, which lock resolution reads; unistore also keeps them in
// the other locks of that request), while tikv-client sends them with
// every prewrite.
func TestLocksKeepSecondariesOnlyForAsyncCommit(t *testing.T) {
	_, pd, kv := testCluster(t)
	ctx := context.Background()
	rctx := regionContext(t, pd, []byte("s"))
	tso := tsoSource(t, pd)
	for _, async := range []bool{false, true} {
		prefix := fmt.Sprintf("s-%v/", async)
		var keys [][]byte
		var mutations []*kvrpcpb.Mutation
		for i := 0; i < 50; i++ {
			k := []byte(fmt.Sprintf("%s%03d", prefix, i))
			keys = append(keys, k)
			mutations = append(mutations, &kvrpcpb.Mutation{Op: kvrpcpb.Op_Put, Key: k, Value: []byte("v")})
		}
		startTS := tso()
		pw, err := kv.KvPrewrite(ctx, &kvrpcpb.PrewriteRequest{
			Context:        rctx,
			Mutations:      mutations,
			PrimaryLock:    keys[0],
			Secondaries:    keys[1:],
			StartVersion:   startTS,
			LockTtl:        60_000,
			UseAsyncCommit: async,
			MinCommitTs:    startTS + 1,
		})
		if err != nil || pw.RegionError != nil || len(pw.Errors) != 0 {
			t.Fatalf("prewrite (async commit %v): %v %v", async, pw, err)
		}
		scan, err := kv.KvScan(ctx, &kvrpcpb.ScanRequest{
			Context: rctx, StartKey: []byte(prefix), EndKey: []byte(prefix + "~"), Limit: 100, Version: tso(),
		})
		if err != nil || scan.RegionError != nil || len(scan.Pairs) != len(keys) {
			t.Fatalf("scan (async commit %v): %v %v", async, scan, err)
		}
		for _, p := range scan.Pairs {
			lock := p.GetError().GetLocked()
			if lock == nil {
				t.Fatalf("async commit %v: %q is not reported locked: %v", async, p.Key, p)
			}
			switch {
			case !async && len(lock.Secondaries) != 0:
				t.Fatalf("without async commit the lock of %q carries %d secondaries", p.Key, len(lock.Secondaries))
			case async && bytes.Equal(p.Key, keys[0]) && len(lock.Secondaries) != len(keys)-1:
				t.Fatalf("the async-commit primary lock carries %d secondaries, want %d", len(lock.Secondaries), len(keys)-1)
			}
		}
	}
}

func TestADataDirSurvivesARestart(t *testing.T) {
	dir := t.TempDir()
	c, pd, kv := testClusterWith(t, options{data: dir, split: [][]byte{[]byte("m")}})
	ids := c.store.rm.GetAllStores()
	cl := newClient(t, pd, kv)
	cl.put(map[string]string{"a": "1", "z": "2"})
	before := boundaries(t, pd)
	cl.tso.CloseSend()
	c.stop() // and again at cleanup: a no-op

	// Splits were kept; more split keys split further.
	c, pd, kv = testClusterWith(t, options{data: dir, split: [][]byte{[]byte("m"), []byte("t")}})
	again := c.store.rm.GetAllStores()
	// The same store, at the new listener's address.
	if len(again) != 1 || again[0].Id != ids[0].Id || again[0].Address != c.tikv {
		t.Fatalf("store after restart: %v (before: %v)", again, ids)
	}
	if want := [][2]string{{"", "m"}, {"m", ""}}; !reflect.DeepEqual(before, want) {
		t.Fatalf("regions before restart: %q, want %q", before, want)
	}
	if got, want := boundaries(t, pd), [][2]string{{"", "m"}, {"m", "t"}, {"t", ""}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("regions after restart: %q, want %q", got, want)
	}
	cl = newClient(t, pd, kv)
	cl.put(map[string]string{"b": "3", "u": "4"})
	readTS := cl.ts()
	for k, v := range map[string]string{"a": "1", "z": "2", "b": "3", "u": "4"} {
		if got, ok := cl.get(k, readTS); !ok || got != v {
			t.Fatalf("%s = %q %v after restart, want %q", k, got, ok, v)
		}
	}
}

// enc is a raw key as PD has it: memcomparable-encoded.
func enc(key string) []byte { return codec.EncodeBytes(nil, []byte(key)) }

// client does what a TiKV client does for the tests below: it finds the
// region of each key in its cache or else asks PD, sends each region its
// keys with that region's epoch, and on a region error drops the region
// from its cache and resends.
type client struct {
	t   *testing.T
	pd  pdpb.PDClient
	kv  tikvpb.TikvClient
	mu  sync.Mutex // one TSO request at a time on the stream
	tso pdpb.PD_TsoClient

	cacheMu sync.Mutex
	cache   map[uint64]*pdpb.GetRegionResponse // by region id

	retries *atomic.Int64 // region errors met (and resent)
}

func newClient(t *testing.T, pd pdpb.PDClient, kv tikvpb.TikvClient) *client {
	t.Helper()
	stream, err := pd.Tso(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Closed before the cluster stops (cleanups run last first), or the
	// server waits for the stream to end.
	t.Cleanup(func() { stream.CloseSend() })
	return &client{t: t, pd: pd, kv: kv, tso: stream, retries: new(atomic.Int64), cache: map[uint64]*pdpb.GetRegionResponse{}}
}

func (c *client) ts() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.tso.Send(&pdpb.TsoRequest{Header: reqHeader(), Count: 1}); err != nil {
		c.t.Fatal(err)
	}
	resp, err := c.tso.Recv()
	if err != nil {
		c.t.Fatal(err)
	}
	return uint64(resp.Timestamp.Physical)<<18 + uint64(resp.Timestamp.Logical)
}

// region is PD's region for a raw key, as a request context: the newest
// PD said.
func (c *client) region(key []byte) (*metapb.Region, *kvrpcpb.Context) {
	c.drop(0)
	return c.cached(key)
}

// cached is the region for a raw key from the cache, or else from PD.
func (c *client) cached(key []byte) (*metapb.Region, *kvrpcpb.Context) {
	k := codec.EncodeBytes(nil, key)
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	var resp *pdpb.GetRegionResponse
	for _, r := range c.cache {
		if bytes.Compare(r.Region.StartKey, k) <= 0 && (len(r.Region.EndKey) == 0 || bytes.Compare(k, r.Region.EndKey) < 0) {
			resp = r
		}
	}
	if resp == nil {
		var err error
		resp, err = c.pd.GetRegion(context.Background(), &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: k})
		if err != nil || resp.Header.Error != nil {
			c.t.Fatalf("region of %q: %v %v", key, resp, err)
		}
		for id, r := range c.cache { // overlapped: older
			if len(resp.Region.EndKey) == 0 || bytes.Compare(r.Region.StartKey, resp.Region.EndKey) < 0 {
				if len(r.Region.EndKey) == 0 || bytes.Compare(resp.Region.StartKey, r.Region.EndKey) < 0 {
					delete(c.cache, id)
				}
			}
		}
		c.cache[resp.Region.Id] = resp
	}
	return resp.Region, &kvrpcpb.Context{RegionId: resp.Region.Id, RegionEpoch: resp.Region.RegionEpoch, Peer: resp.Leader}
}

// drop forgets a region (0: all).
func (c *client) drop(id uint64) {
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if id == 0 {
		clear(c.cache)
	}
	delete(c.cache, id)
}

// byRegion sends keys, grouped by region, with send, until no region
// answers a region error. send returns the region error, and fails the
// test on any other.
func (c *client) byRegion(keys [][]byte, send func(rctx *kvrpcpb.Context, keys [][]byte) *errorpb.Error) {
	c.t.Helper()
	for attempt := 0; len(keys) > 0; attempt++ {
		if attempt == 50 {
			c.t.Fatalf("keys %q: still region errors", keys)
		}
		groups := map[uint64][][]byte{}
		ctxs := map[uint64]*kvrpcpb.Context{}
		var order []uint64
		for _, k := range keys {
			_, rctx := c.cached(k)
			if _, ok := groups[rctx.RegionId]; !ok {
				order = append(order, rctx.RegionId)
				ctxs[rctx.RegionId] = rctx
			}
			groups[rctx.RegionId] = append(groups[rctx.RegionId], k)
		}
		var retry [][]byte
		for _, id := range order {
			if e := send(ctxs[id], groups[id]); e != nil {
				if e.EpochNotMatch == nil && e.KeyNotInRegion == nil {
					c.t.Fatalf("unexpected region error: %v", e)
				}
				retry = append(retry, groups[id]...)
				c.retries.Add(1)
				c.drop(id)
			}
		}
		keys = retry
	}
}

func (c *client) prewrite(kvs map[string]string, primary string, startTS uint64) {
	c.t.Helper()
	var keys [][]byte
	for k := range kvs {
		keys = append(keys, []byte(k))
	}
	c.byRegion(keys, func(rctx *kvrpcpb.Context, keys [][]byte) *errorpb.Error {
		req := &kvrpcpb.PrewriteRequest{Context: rctx, PrimaryLock: []byte(primary), StartVersion: startTS, LockTtl: 20000, TxnSize: uint64(len(kvs))}
		for _, k := range keys {
			req.Mutations = append(req.Mutations, &kvrpcpb.Mutation{Op: kvrpcpb.Op_Put, Key: k, Value: []byte(kvs[string(k)])})
		}
		resp, err := c.kv.KvPrewrite(context.Background(), req)
		if err != nil || len(resp.Errors) != 0 {
			c.t.Fatalf("prewrite: %v %v", resp, err)
		}
		return resp.RegionError
	})
}

func (c *client) commit(keys []string, startTS, commitTS uint64) {
	c.t.Helper()
	var raw [][]byte
	for _, k := range keys {
		raw = append(raw, []byte(k))
	}
	c.byRegion(raw, func(rctx *kvrpcpb.Context, keys [][]byte) *errorpb.Error {
		resp, err := c.kv.KvCommit(context.Background(), &kvrpcpb.CommitRequest{Context: rctx, Keys: keys, StartVersion: startTS, CommitVersion: commitTS})
		if err != nil || resp.Error != nil {
			c.t.Fatalf("commit: %v %v", resp, err)
		}
		return resp.RegionError
	})
}

// get reads a key at ts; a key error (a lock) fails the test.
func (c *client) get(key string, ts uint64) (string, bool) {
	c.t.Helper()
	var value string
	var found bool
	c.byRegion([][]byte{[]byte(key)}, func(rctx *kvrpcpb.Context, keys [][]byte) *errorpb.Error {
		resp, err := c.kv.KvGet(context.Background(), &kvrpcpb.GetRequest{Context: rctx, Key: keys[0], Version: ts})
		if err != nil || resp.Error != nil {
			c.t.Fatalf("get %q: %v %v", key, resp, err)
		}
		value, found = string(resp.Value), !resp.NotFound
		return resp.RegionError
	})
	return value, found
}

// put writes kvs in one transaction (primary: the least key).
func (c *client) put(kvs map[string]string) {
	c.t.Helper()
	var keys []string
	for k := range kvs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	startTS := c.ts()
	c.prewrite(kvs, keys[0], startTS)
	commitTS := c.ts()
	c.commit(keys[:1], startTS, commitTS)
	c.commit(keys[1:], startTS, commitTS)
}

// boundaries are the regions' [start, end) keys from PD's ScanRegions,
// decoded to raw keys.
func boundaries(t *testing.T, pd pdpb.PDClient) [][2]string {
	t.Helper()
	resp, err := pd.ScanRegions(context.Background(), &pdpb.ScanRegionsRequest{Header: reqHeader()})
	if err != nil || resp.Header.Error != nil || len(resp.RegionMetas) != len(resp.Regions) {
		t.Fatalf("scan regions: %v %v", resp, err)
	}
	var out [][2]string
	for _, r := range resp.Regions {
		start, err1 := decodeBound(r.Region.StartKey)
		end, err2 := decodeBound(r.Region.EndKey)
		if err1 != nil || err2 != nil || r.Leader == nil {
			t.Fatalf("region %v: %v %v", r, err1, err2)
		}
		out = append(out, [2]string{string(start), string(end)})
	}
	return out
}

func TestPreSplitRegionsAreReportedInOrder(t *testing.T) {
	split, err := parseKeys(strings.Split("m,c,x%00y,m", ","))
	if err != nil {
		t.Fatal(err)
	}
	c, pd, _ := testClusterWith(t, options{split: split})
	ctx := context.Background()

	want := [][2]string{{"", "c"}, {"c", "m"}, {"m", "x\x00y"}, {"x\x00y", ""}}
	if got := boundaries(t, pd); !reflect.DeepEqual(got, want) {
		t.Fatalf("regions: %q, want %q", got, want)
	}
	// ScanRegions from a key inside a region starts at that region; a
	// limit and an end key bound it.
	part, err := pd.ScanRegions(ctx, &pdpb.ScanRegionsRequest{Header: reqHeader(), StartKey: enc("d"), EndKey: enc("y"), Limit: 1})
	if err != nil || len(part.Regions) != 1 || !bytes.Equal(part.Regions[0].Region.StartKey, enc("c")) {
		t.Fatalf("scan from d, limit 1: %v %v", part, err)
	}
	part, err = pd.ScanRegions(ctx, &pdpb.ScanRegionsRequest{Header: reqHeader(), StartKey: enc("d"), EndKey: enc("m")})
	if err != nil || len(part.Regions) != 1 {
		t.Fatalf("scan [d, m): %v %v", part, err)
	}

	// Each key is in the region its split keys put it in, as the client
	// asks (encoded keys); boundary keys start their region.
	ids := map[string]uint64{}
	for key, start := range map[string]string{"": "", "b": "", "c": "c", "l\xff": "c", "m": "m", "x": "m", "x\x00": "m", "x\x00y": "x\x00y", "zzz": "x\x00y"} {
		r, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: enc(key)})
		if err != nil || r.Header.Error != nil {
			t.Fatalf("region of %q: %v %v", key, r, err)
		}
		if got, _ := decodeBound(r.Region.StartKey); string(got) != start {
			t.Fatalf("region of %q starts at %q, want %q", key, got, start)
		}
		ids[start] = r.Region.Id
		byID, err := pd.GetRegionByID(ctx, &pdpb.GetRegionByIDRequest{Header: reqHeader(), RegionId: r.Region.Id})
		if err != nil || !bytes.Equal(byID.Region.StartKey, r.Region.StartKey) || !bytes.Equal(byID.Region.EndKey, r.Region.EndKey) {
			t.Fatalf("region %d by id: %v %v", r.Region.Id, byID, err)
		}
	}
	if len(ids) != 4 {
		t.Fatalf("region ids: %v", ids)
	}
	// The region before the one starting at m ends at m.
	prev, err := pd.GetPrevRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: enc("m")})
	if err != nil || prev.Region.GetId() != ids["c"] {
		t.Fatalf("prev region of m: %v %v", prev, err)
	}

	// The admin form of the same regions: raw keys, percent-escaped.
	raw, err := c.store.rawRegions()
	if err != nil || len(raw) != 4 || raw[2].Start != "m" || raw[2].End != "x%00y" || raw[3].End != "" {
		t.Fatalf("raw regions: %+v %v", raw, err)
	}
}

// adminPost posts a body to the admin listener's /split.
func adminPost(t *testing.T, c *cluster, body string) (int, []rawRegion) {
	t.Helper()
	resp, err := http.Post("http://"+c.admin+"/split", "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var regions []rawRegion
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&regions); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, regions
}

// POST /orphan leaves locks whose transaction has no primary lock and no
// commit or rollback record: CheckTxnStatus answers TxnNotFound until asked
// to roll the transaction back.
func TestAdminLeavesOrphanLocks(t *testing.T) {
	c, pd, kv := testClusterWith(t, options{admin: "127.0.0.1:0"})
	ctx := context.Background()
	post := func(query, body string) (int, string) {
		resp, err := http.Post("http://"+c.admin+"/orphan?"+query, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, q := range []string{"", "primary=o/p&age=soon", "primary=o/p&age=-1s", "primary=%zz"} {
		if code, _ := post(q, "o/1"); code != http.StatusBadRequest {
			t.Fatalf("query %q: %d, want 400", q, code)
		}
	}
	code, body := post("primary=o/p&age=30s", "o/1\no/2")
	var planted struct {
		StartTS uint64 `json:"start_ts"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &planted) != nil {
		t.Fatalf("orphan: %d %s", code, body)
	}
	if age := time.Since(time.UnixMilli(int64(planted.StartTS >> 18))); age < 30*time.Second || age > time.Minute {
		t.Fatalf("the transaction started %v ago, want 30s", age)
	}
	region, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: enc("o/1")})
	if err != nil {
		t.Fatal(err)
	}
	rctx := &kvrpcpb.Context{RegionId: region.Region.Id, RegionEpoch: region.Region.RegionEpoch, Peer: region.Leader}
	now := uint64(time.Now().UnixMilli()) << 18
	got, err := kv.KvGet(ctx, &kvrpcpb.GetRequest{Context: rctx, Key: []byte("o/2"), Version: now})
	if lock := got.GetError().GetLocked(); err != nil || lock == nil || string(lock.PrimaryLock) != "o/p" || lock.LockVersion != planted.StartTS {
		t.Fatalf("a read of an orphan-locked key: %v %v", got, err)
	}
	check := func(rollback bool) *kvrpcpb.CheckTxnStatusResponse {
		st, err := kv.KvCheckTxnStatus(ctx, &kvrpcpb.CheckTxnStatusRequest{
			Context: rctx, PrimaryKey: []byte("o/p"), LockTs: planted.StartTS, CurrentTs: now, RollbackIfNotExist: rollback,
		})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := check(false); st.GetError().GetTxnNotFound() == nil {
		t.Fatalf("the status of the orphans' transaction: %v, want TxnNotFound", st)
	}
	if st := check(true); st.Error != nil || st.Action != kvrpcpb.Action_LockNotExistRollback {
		t.Fatalf("rolling the orphans' transaction back: %v", st)
	}
	// A key already locked is not locked again.
	if code, _ := post("primary=o/q", "o/1"); code != http.StatusConflict {
		t.Fatalf("orphan over a lock: %d, want 409", code)
	}
	// Resolving the rolled-back transaction's locks frees the keys.
	rl, err := kv.KvResolveLock(ctx, &kvrpcpb.ResolveLockRequest{
		Context: rctx, TxnInfos: []*kvrpcpb.TxnInfo{{Txn: planted.StartTS, Status: 0}},
	})
	if err != nil || rl.Error != nil || rl.RegionError != nil {
		t.Fatalf("resolve: %v %v", rl, err)
	}
	for _, k := range []string{"o/1", "o/2"} {
		got, err := kv.KvGet(ctx, &kvrpcpb.GetRequest{Context: rctx, Key: []byte(k), Version: uint64(time.Now().UnixMilli()) << 18})
		if err != nil || got.Error != nil || !got.NotFound {
			t.Fatalf("a read of %s after the rollback: %v %v", k, got, err)
		}
	}
}

// POST /orphan with primary_ttl leaves a live writer instead: its primary
// locked with that TTL (CheckTxnStatus finds it alive), its secondaries
// with 3 s TTLs long passed.
func TestAdminLeavesALiveWriter(t *testing.T) {
	c, pd, kv := testClusterWith(t, options{admin: "127.0.0.1:0"})
	ctx := context.Background()
	for _, q := range []string{"primary=w/p&primary_ttl=soon", "primary=w/p&primary_ttl=0s"} {
		resp, err := http.Post("http://"+c.admin+"/orphan?"+q, "text/plain", strings.NewReader("w/1"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("query %q: %d, want 400", q, resp.StatusCode)
		}
	}
	resp, err := http.Post("http://"+c.admin+"/orphan?primary=w/p&age=1m&primary_ttl=10m", "text/plain", strings.NewReader("w/1"))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("live writer: %v %v", resp, err)
	}
	var planted struct {
		StartTS uint64 `json:"start_ts"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&planted); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	region, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: enc("w/1")})
	if err != nil {
		t.Fatal(err)
	}
	rctx := &kvrpcpb.Context{RegionId: region.Region.Id, RegionEpoch: region.Region.RegionEpoch, Peer: region.Leader}
	now := uint64(time.Now().UnixMilli()) << 18
	locks, err := kv.KvScanLock(ctx, &kvrpcpb.ScanLockRequest{Context: rctx, MaxVersion: now, StartKey: []byte("w/"), EndKey: []byte("w0")})
	if err != nil || len(locks.Locks) != 2 {
		t.Fatalf("the live writer's locks: %v %v", locks, err)
	}
	for _, l := range locks.Locks {
		want := uint64(3000)
		if string(l.Key) == "w/p" {
			want = 600000
		}
		if l.LockVersion != planted.StartTS || l.LockTtl != want {
			t.Fatalf("lock %s: version %d ttl %d, want %d and %d", l.Key, l.LockVersion, l.LockTtl, planted.StartTS, want)
		}
	}
	st, err := kv.KvCheckTxnStatus(ctx, &kvrpcpb.CheckTxnStatusRequest{
		Context: rctx, PrimaryKey: []byte("w/p"), LockTs: planted.StartTS, CurrentTs: now,
	})
	if err != nil || st.Error != nil || st.LockTtl == 0 {
		t.Fatalf("the live writer's status: %v %v, want its primary locked", st, err)
	}
}

// ScanLock answers the locks in its range, up to its limit, so a client
// paging through them gets each once.
func TestScanLockKeepsToItsRangeAndLimit(t *testing.T) {
	c, pd, kv := testClusterWith(t, options{admin: "127.0.0.1:0"})
	ctx := context.Background()
	resp, err := http.Post("http://"+c.admin+"/orphan?primary=l/p", "text/plain", strings.NewReader("l/1\nl/2\nl/3\nl/4\nl/5"))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("orphan: %v %v", resp, err)
	}
	resp.Body.Close()
	region, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: enc("l/1")})
	if err != nil {
		t.Fatal(err)
	}
	rctx := &kvrpcpb.Context{RegionId: region.Region.Id, RegionEpoch: region.Region.RegionEpoch, Peer: region.Leader}
	scan := func(start, end string, limit uint32) []string {
		got, err := kv.KvScanLock(ctx, &kvrpcpb.ScanLockRequest{
			Context: rctx, MaxVersion: uint64(time.Now().UnixMilli()) << 18, StartKey: []byte(start), EndKey: []byte(end), Limit: limit,
		})
		if err != nil || got.Error != nil || got.RegionError != nil {
			t.Fatalf("scan lock: %v %v", got, err)
		}
		var keys []string
		for _, l := range got.Locks {
			keys = append(keys, string(l.Key))
		}
		return keys
	}
	for _, tc := range []struct {
		start, end string
		limit      uint32
		want       []string
	}{
		{"l/3", "", 2, []string{"l/3", "l/4"}},
		{"l/2", "l/4", 10, []string{"l/2", "l/3"}},
		{"l/", "", 0, []string{"l/1", "l/2", "l/3", "l/4", "l/5"}},
		{"l/6", "", 10, nil},
	} {
		if got := scan(tc.start, tc.end, tc.limit); !reflect.DeepEqual(got, tc.want) {
			t.Fatalf("locks in [%q, %q) up to %d: %q, want %q", tc.start, tc.end, tc.limit, got, tc.want)
		}
	}
}

func TestAdminSplitsAtRunTime(t *testing.T) {
	c, pd, _ := testClusterWith(t, options{admin: "127.0.0.1:0"})
	ctx := context.Background()
	before, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: enc("q")})
	if err != nil {
		t.Fatal(err)
	}

	// Two keys, one a line (CRLF too), escapes decoded; the last line end
	// is optional.
	code, regions := adminPost(t, c, "p\r\nfmx/%FF%00\n")
	if code != http.StatusOK || len(regions) != 3 || regions[1].Start != "fmx/%FF%00" || regions[1].End != "p" || regions[2].Start != "p" {
		t.Fatalf("split: %d %+v", code, regions)
	}
	// The old region keeps its id and the part below the first key, one
	// version up; GetRegion answers the new regions.
	left, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: enc("a")})
	if err != nil || left.Region.Id != before.Region.Id || left.Region.RegionEpoch.Version != before.Region.RegionEpoch.Version+1 ||
		!bytes.Equal(left.Region.EndKey, enc("fmx/\xff\x00")) {
		t.Fatalf("left region: %v %v (before: %v)", left, err, before)
	}
	right, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: enc("q")})
	if err != nil || right.Region.Id == before.Region.Id || !bytes.Equal(right.Region.StartKey, enc("p")) || len(right.Region.EndKey) != 0 {
		t.Fatalf("right region: %v %v", right, err)
	}

	// Splitting at a boundary again changes nothing.
	if code, again := adminPost(t, c, "p"); code != http.StatusOK || !reflect.DeepEqual(again, regions) {
		t.Fatalf("split again: %d %+v, want %+v", code, again, regions)
	}
	resp, err := http.Get("http://" + c.admin + "/regions")
	if err != nil {
		t.Fatal(err)
	}
	var listed []rawRegion
	err = json.NewDecoder(resp.Body).Decode(&listed)
	resp.Body.Close()
	if err != nil || !reflect.DeepEqual(listed, regions) {
		t.Fatalf("GET /regions: %+v %v", listed, err)
	}

	// Bad input: 400, and nothing split.
	for _, body := range []string{"", "\n", "a\n\nb", "%zz", "ok\n%4"} {
		if code, _ := adminPost(t, c, body); code != http.StatusBadRequest {
			t.Fatalf("body %q: %d, want 400", body, code)
		}
	}
	if got := boundaries(t, pd); len(got) != 3 {
		t.Fatalf("after bad input: %q", got)
	}
	if resp, err := http.Get("http://" + c.admin + "/split"); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /split: %v %v", resp, err)
	}

	// The address file names the admin listener.
	path := filepath.Join(t.TempDir(), "addr")
	if err := writeAddrFile(path, c); err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile(path)
	if err != nil || string(body) != "pd="+c.pd+"\ntikv="+c.tikv+"\nadmin="+c.admin+"\n" {
		t.Fatalf("addr file: %q %v", body, err)
	}
}

func TestRequestsToAnOldRegionGetRegionErrors(t *testing.T) {
	c, pd, kv := testCluster(t)
	cl := newClient(t, pd, kv)
	ctx := context.Background()
	cl.put(map[string]string{"a": "1", "n": "2", "z": "3"})

	_, old := cl.region([]byte("a")) // the one region
	if err := c.store.split([][]byte{[]byte("m")}); err != nil {
		t.Fatal(err)
	}
	leftMeta, left := cl.region([]byte("a"))
	rightMeta, right := cl.region([]byte("z"))
	ts := cl.ts()

	// The old epoch: EpochNotMatch, with the region as it is now and the
	// one split off it.
	got, err := kv.KvGet(ctx, &kvrpcpb.GetRequest{Context: old, Key: []byte("a"), Version: ts})
	enm := got.GetRegionError().GetEpochNotMatch()
	if err != nil || enm == nil || len(enm.CurrentRegions) != 2 ||
		!proto.Equal(enm.CurrentRegions[0].RegionEpoch, leftMeta.RegionEpoch) || enm.CurrentRegions[1].Id != rightMeta.Id {
		t.Fatalf("get with the old epoch: %v %v", got, err)
	}
	pw, err := kv.KvPrewrite(ctx, &kvrpcpb.PrewriteRequest{Context: old, Mutations: []*kvrpcpb.Mutation{{Op: kvrpcpb.Op_Put, Key: []byte("b"), Value: []byte("x")}}, PrimaryLock: []byte("b"), StartVersion: cl.ts(), LockTtl: 3000})
	if err != nil || pw.GetRegionError().GetEpochNotMatch() == nil {
		t.Fatalf("prewrite with the old epoch: %v %v", pw, err)
	}

	// The current epoch but a key of the other region: KeyNotInRegion.
	got, err = kv.KvGet(ctx, &kvrpcpb.GetRequest{Context: left, Key: []byte("z"), Version: ts})
	if knr := got.GetRegionError().GetKeyNotInRegion(); err != nil || knr == nil || knr.RegionId != leftMeta.Id || !bytes.Equal(knr.Key, []byte("z")) {
		t.Fatalf("get of a key outside the region: %v %v", got, err)
	}
	bg, err := kv.KvBatchGet(ctx, &kvrpcpb.BatchGetRequest{Context: right, Keys: [][]byte{[]byte("n"), []byte("a")}, Version: ts})
	if err != nil || bg.GetRegionError().GetKeyNotInRegion() == nil {
		t.Fatalf("batch get with a key outside the region: %v %v", bg, err)
	}
	cm, err := kv.KvCommit(ctx, &kvrpcpb.CommitRequest{Context: left, Keys: [][]byte{[]byte("m")}, StartVersion: ts, CommitVersion: cl.ts()})
	if err != nil || cm.GetRegionError().GetKeyNotInRegion() == nil {
		t.Fatalf("commit of a key outside the region: %v %v", cm, err)
	}
	scan, err := kv.KvScan(ctx, &kvrpcpb.ScanRequest{Context: right, StartKey: []byte("a"), Limit: 10, Version: ts})
	if err != nil || scan.GetRegionError().GetKeyNotInRegion() == nil {
		t.Fatalf("scan from a key outside the region: %v %v", scan, err)
	}

	// A scan stops at its region's end, forward and backward.
	scan, err = kv.KvScan(ctx, &kvrpcpb.ScanRequest{Context: left, StartKey: []byte("a"), Limit: 10, Version: ts})
	if err != nil || scan.RegionError != nil || len(scan.Pairs) != 1 || string(scan.Pairs[0].Value) != "1" {
		t.Fatalf("scan of the left region: %v %v", scan, err)
	}
	scan, err = kv.KvScan(ctx, &kvrpcpb.ScanRequest{Context: right, Limit: 10, Version: ts, Reverse: true})
	if err != nil || scan.RegionError != nil || len(scan.Pairs) != 2 || string(scan.Pairs[0].Key) != "z" || string(scan.Pairs[1].Key) != "n" {
		t.Fatalf("reverse scan of the right region: %v %v", scan, err)
	}

	// Keys in their regions read as before the split.
	for k, v := range map[string]string{"a": "1", "n": "2", "z": "3"} {
		if got, ok := cl.get(k, cl.ts()); !ok || got != v {
			t.Fatalf("%s = %q %v, want %q", k, got, ok, v)
		}
	}
}

func TestATransactionCommitsAcrossASplit(t *testing.T) {
	c, pd, kv := testCluster(t)
	cl := newClient(t, pd, kv)
	ctx := context.Background()

	kvs := map[string]string{"fma/1": "primary", "fmm/2": "second", "fmz/3": "third"}
	startTS := cl.ts()
	cl.prewrite(kvs, "fma/1", startTS)
	_, old := cl.region([]byte("fma/1"))
	oldKeys := [][]byte{[]byte("fma/1"), []byte("fmm/2"), []byte("fmz/3")}

	// Split between the locked keys, at run time.
	if err := c.store.split([][]byte{[]byte("fmm/"), []byte("fmz/")}); err != nil {
		t.Fatal(err)
	}
	if got := boundaries(t, pd); len(got) != 3 {
		t.Fatalf("regions: %q", got)
	}

	// The locks moved with their keys: a read in the new region meets one.
	_, zctx := cl.region([]byte("fmz/3"))
	got, err := kv.KvGet(ctx, &kvrpcpb.GetRequest{Context: zctx, Key: []byte("fmz/3"), Version: cl.ts()})
	if err != nil || got.RegionError != nil || got.Error.GetLocked() == nil || got.Error.Locked.LockVersion != startTS {
		t.Fatalf("read of a locked key after the split: %v %v", got, err)
	}

	// The commit, sent as the client planned it before the split, is
	// refused; the client asks PD again and commits region by region.
	commitTS := cl.ts()
	cm, err := kv.KvCommit(ctx, &kvrpcpb.CommitRequest{Context: old, Keys: oldKeys, StartVersion: startTS, CommitVersion: commitTS})
	if err != nil || cm.GetRegionError().GetEpochNotMatch() == nil {
		t.Fatalf("commit with the old epoch: %v %v", cm, err)
	}
	cl.commit([]string{"fma/1"}, startTS, commitTS)
	cl.commit([]string{"fmm/2", "fmz/3"}, startTS, commitTS)

	readTS := cl.ts()
	for k, v := range kvs {
		if got, ok := cl.get(k, readTS); !ok || got != v {
			t.Fatalf("%s = %q %v, want %q", k, got, ok, v)
		}
	}
}

// Transactions keep committing while the key space is split under them;
// every one reads back whole.
func TestSplitsUnderConcurrentTransactions(t *testing.T) {
	c, pd, kv := testCluster(t)
	const writers, txns = 4, 15

	var wg sync.WaitGroup
	retries := new(atomic.Int64)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := newClient(t, pd, kv)
			cl.retries = retries
			for i := 0; i < txns; i++ {
				cl.put(map[string]string{
					fmt.Sprintf("fma/%d/%d", w, i): "a",
					fmt.Sprintf("fmk/%d/%d", w, i): "k",
					fmt.Sprintf("fmt/%d/%d", w, i): "t",
				})
			}
		}()
	}
	for _, k := range []string{"fmk/", "fma/2", "fmt/1/5", "fmk/3/", "fmb", "fmt/0", "fma/0/7", "fmt/3/1"} {
		if err := c.store.split([][]byte{[]byte(k)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	t.Logf("%d requests resent after a region error", retries.Load())

	cl := newClient(t, pd, kv)
	readTS := cl.ts()
	for w := 0; w < writers; w++ {
		for i := 0; i < txns; i++ {
			for _, p := range []string{"a", "k", "t"} {
				if got, ok := cl.get(fmt.Sprintf("fm%s/%d/%d", p, w, i), readTS); !ok || got != p {
					t.Fatalf("fm%s/%d/%d = %q %v", p, w, i, got, ok)
				}
			}
		}
	}
	if got := boundaries(t, pd); len(got) != 9 {
		t.Fatalf("regions: %q", got)
	}
}

func TestSplitKeysAreParsed(t *testing.T) {
	keys, err := parseKeys([]string{"fmx/a%2Cb", "a+b%25", "%00%ff"})
	if err != nil || string(keys[0]) != "fmx/a,b" || string(keys[1]) != "a+b%" || string(keys[2]) != "\x00\xff" {
		t.Fatalf("keys: %q %v", keys, err)
	}
	for _, k := range keys {
		if again, err := parseKey(escapeKey(k)); err != nil || !bytes.Equal(again, k) {
			t.Fatalf("%q escaped as %q reads back as %q %v", k, escapeKey(k), again, err)
		}
	}
	for _, bad := range []string{"", "%", "%g0"} {
		if _, err := parseKey(bad); err == nil {
			t.Fatalf("%q was read", bad)
		}
	}
}
