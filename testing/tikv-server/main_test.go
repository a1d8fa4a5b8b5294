package main

import (
	"context"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// testCluster starts the servers in-process on free ports, with clients.
func testCluster(t *testing.T) (*cluster, pdpb.PDClient, tikvpb.TikvClient) {
	t.Helper()
	c, err := start("127.0.0.1:0", "127.0.0.1:0", "")
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
	region, err := pd.GetRegion(ctx, &pdpb.GetRegionRequest{Header: reqHeader(), RegionKey: []byte("k")})
	if err != nil {
		t.Fatal(err)
	}
	rctx := &kvrpcpb.Context{RegionId: region.Region.Id, RegionEpoch: region.Region.RegionEpoch, Peer: region.Leader}
	stream, err := pd.Tso(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tso := func() uint64 {
		if err := stream.Send(&pdpb.TsoRequest{Header: reqHeader(), Count: 1}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return uint64(resp.Timestamp.Physical)<<18 + uint64(resp.Timestamp.Logical)
	}

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

func TestADataDirSurvivesARestart(t *testing.T) {
	dir := t.TempDir()
	c, err := start("127.0.0.1:0", "127.0.0.1:0", dir)
	if err != nil {
		t.Fatal(err)
	}
	ids := c.store.rm.GetAllStores()
	c.stop()

	c, err = start("127.0.0.1:0", "127.0.0.1:0", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.stop()
	again := c.store.rm.GetAllStores()
	// The same store, at the new listener's address.
	if len(again) != 1 || again[0].Id != ids[0].Id || again[0].Address != c.tikv {
		t.Fatalf("store after restart: %v (before: %v)", again, ids)
	}
}
