// Command tikv-server is a single-process TiKV cluster for tests: TiDB's
// unistore (the Percolator/MVCC implementation of the TiKV gRPC API that
// TiDB's own tests run against) served over real gRPC, plus the few PD RPCs
// a TiKV client needs to find it (members, TSO, regions, stores).
//
// It exists so flashmall's TiKV ledger adapter (tikv-client, Rust) can be
// tested against a real TiKV-protocol server without a TiKV/PD deployment.
//
//	tikv-server -pd 127.0.0.1:0 -tikv 127.0.0.1:0 [-data DIR] [-addr-file PATH]
//	            [-split KEY,KEY...] [-admin 127.0.0.1:0]
//
// Once the listeners serve, it prints the PD address on stdout and, with
// -addr-file, writes "pd=HOST:PORT\ntikv=HOST:PORT\n" (and, with -admin,
// "admin=HOST:PORT\n") to PATH (atomically, by rename), so a script can wait
// for the file; it is removed on exit. The key space starts as one region,
// split at the -split keys before serving; the -admin HTTP listener splits
// more at run time (see regions.go). SIGTERM/SIGINT stop it. See README.md.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"github.com/pingcap/log"
	usconf "github.com/pingcap/tidb/pkg/store/mockstore/unistore/config"
	ussvr "github.com/pingcap/tidb/pkg/store/mockstore/unistore/server"
	"github.com/pingcap/tidb/pkg/store/mockstore/unistore/tikv"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// clusterID is the id every PD response header carries; clients check that
// all PD endpoints agree on it.
const clusterID = 0x666c6173686d616c // "flashmal"

func main() {
	pdFlag := flag.String("pd", "127.0.0.1:0", "PD gRPC listen address (port 0: a free port)")
	tikvFlag := flag.String("tikv", "127.0.0.1:0", "TiKV gRPC listen address (port 0: a free port)")
	dataFlag := flag.String("data", "", "unistore data directory, kept across runs (default: a temp dir, in-memory mode, removed on exit)")
	addrFile := flag.String("addr-file", "", "file to write pd=ADDR, tikv=ADDR (and admin=ADDR) lines to once the listeners serve (removed on exit)")
	splitFlag := flag.String("split", "", "comma-separated raw keys to split the key space at before serving (%XX escapes allowed)")
	adminFlag := flag.String("admin", "", "HTTP admin listen address, for POST /split, GET /regions and POST /orphan (default: none)")
	flag.Parse()
	quietLogs()
	o := options{pd: *pdFlag, tikv: *tikvFlag, data: *dataFlag, admin: *adminFlag}
	if *splitFlag != "" {
		keys, err := parseKeys(strings.Split(*splitFlag, ","))
		if err != nil {
			fmt.Fprintln(os.Stderr, "tikv-server: -split:", err)
			os.Exit(2)
		}
		o.split = keys
	}
	if err := run(o, *addrFile); err != nil {
		fmt.Fprintln(os.Stderr, "tikv-server:", err)
		os.Exit(1)
	}
}

// options are what start needs: listen addresses ("" admin: none), the
// data dir ("": a temporary in-memory store) and raw keys to split at.
type options struct {
	pd, tikv, data, admin string
	split                 [][]byte
}

// quietLogs sends unistore's (pingcap/log) logging to stderr at warn level:
// stdout carries only the PD address.
func quietLogs() {
	logger, props, err := log.InitLoggerWithWriteSyncer(
		&log.Config{Level: "warn", DisableStacktrace: true},
		zapcore.Lock(os.Stderr), zapcore.Lock(os.Stderr))
	if err == nil {
		log.ReplaceGlobals(logger, props)
	}
}

func run(o options, addrFile string) error {
	c, err := start(o)
	if err != nil {
		return err
	}
	defer c.stop()
	if addrFile != "" {
		if err := writeAddrFile(addrFile, c); err != nil {
			return err
		}
		defer os.Remove(addrFile)
	}
	fmt.Println(c.pd)
	fmt.Fprintf(os.Stderr, "tikv-server: pd=%s tikv=%s admin=%s data=%s\n", c.pd, c.tikv, c.admin, c.store.dir)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case sig := <-sigs:
		fmt.Fprintf(os.Stderr, "tikv-server: %s, stopping\n", sig)
		return nil
	case err := <-c.errs:
		return err
	}
}

// cluster is the running pair of gRPC servers over one unistore, and the
// admin HTTP server if asked for.
type cluster struct {
	pd, tikv, admin    string // listen addresses, host:port ("" admin: none)
	store              *unistore
	pdServer, kvServer *grpc.Server
	adminServer        *http.Server
	errs               chan error // a server that stopped serving
	stopOnce           sync.Once
}

func start(o options) (*cluster, error) {
	// Listen first: the store's address (what PD tells clients) must be the
	// real port of the TiKV listener. No admin address: a nil listener.
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			if l != nil {
				l.Close()
			}
		}
	}
	for _, addr := range []string{o.pd, o.tikv, o.admin} {
		if addr == "" {
			listeners = append(listeners, nil)
			continue
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll()
			return nil, err
		}
		listeners = append(listeners, l)
	}
	pdLis, kvLis, adminLis := listeners[0], listeners[1], listeners[2]
	store, err := openUnistore(o.data, kvLis.Addr().String())
	if err == nil {
		if err = store.split(o.split); err != nil {
			store.close()
		}
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	c := &cluster{
		pd:    pdLis.Addr().String(),
		tikv:  kvLis.Addr().String(),
		store: store,
		errs:  make(chan error, 3),
	}
	kv := &kvService{us: store.server, rm: store.rm}
	c.kvServer = grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.UnaryInterceptor(kv.withSibling))
	c.pdServer = grpc.NewServer()
	tikvpb.RegisterTikvServer(c.kvServer, kv)
	pdpb.RegisterPDServer(c.pdServer, &pdService{rm: store.rm, pd: store.pd, url: "http://" + c.pd})
	go func() { c.errs <- c.kvServer.Serve(kvLis) }()
	go func() { c.errs <- c.pdServer.Serve(pdLis) }()
	if adminLis != nil {
		c.admin = adminLis.Addr().String()
		c.adminServer = serveAdmin(adminLis, store, c.errs)
	}
	return c, nil
}

// stop stops the servers and closes the store; calls after the first do
// nothing.
func (c *cluster) stop() { c.stopOnce.Do(c.stopNow) }

func (c *cluster) stopNow() {
	if c.adminServer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = c.adminServer.Shutdown(ctx)
		cancel()
		c.adminServer.Close()
	}
	// Give in-flight RPCs a moment, then cut the rest (a client's TSO
	// stream never ends by itself).
	for _, s := range []*grpc.Server{c.pdServer, c.kvServer} {
		done := make(chan struct{})
		go func() { s.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			s.Stop()
		}
	}
	c.store.close()
}

func writeAddrFile(path string, c *cluster) error {
	tmp := path + ".tmp"
	body := fmt.Sprintf("pd=%s\ntikv=%s\n", c.pd, c.tikv)
	if c.admin != "" {
		body += fmt.Sprintf("admin=%s\n", c.admin)
	}
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// unistore is the storage half: unistore's TiKV server, its region manager
// (the source of truth for region ids, epochs, peers and stores, which the
// server validates every request's context against) and its mock PD.
type unistore struct {
	server  *tikv.Server
	rm      *tikv.MockRegionManager
	pd      *tikv.MockPD
	dir     string
	temp    bool
	splitMu sync.Mutex // one split (u.split) at a time
}

func openUnistore(dataDir, storeAddr string) (*unistore, error) {
	u := &unistore{dir: dataDir}
	conf := usconf.DefaultConf
	conf.Server.Raft = false
	conf.Server.StoreAddr = storeAddr
	// Small test-sized files, as unistore.New uses for its stores (the
	// defaults preallocate a 256 MiB value log).
	conf.Engine.ValueThreshold = 0
	conf.Engine.MaxMemTableSize = 12 << 20
	conf.Engine.NumCompactors = 1
	conf.Engine.VlogFileSize = 16 << 20
	if dataDir == "" {
		dir, err := os.MkdirTemp("", "flashmall-tikv-")
		if err != nil {
			return nil, err
		}
		u.dir, u.temp = dir, true
		// Thrown away on exit: no syncs, no compaction on close.
		conf.Engine.VolatileMode = true
		conf.Engine.SyncWrite = false
		conf.Engine.CompactL0WhenClose = false
	} else if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return nil, err
	}
	conf.Engine.DBPath = u.dir

	server, rm, pd, err := ussvr.NewMock(&conf, clusterID)
	if err != nil {
		u.removeTemp()
		return nil, fmt.Errorf("open unistore in %s: %w", u.dir, err)
	}
	u.server, u.rm, u.pd = server, rm, pd

	ctx := context.Background()
	bootstrapped, err := pd.IsBootstrapped(ctx)
	if err != nil {
		u.close()
		return nil, err
	}
	if !bootstrapped {
		// One store and one region covering every key, as unistore's
		// BootstrapWithSingleStore does, but with the real address.
		storeID, regionID, peerID := rm.AllocID(), rm.AllocID(), rm.AllocID()
		err = rm.Bootstrap(
			[]*metapb.Store{{Id: storeID, Address: storeAddr, State: metapb.StoreState_Up}},
			&metapb.Region{
				Id:          regionID,
				RegionEpoch: &metapb.RegionEpoch{ConfVer: 1, Version: 1},
				Peers:       []*metapb.Peer{{Id: peerID, StoreId: storeID}},
			})
		if err != nil {
			u.close()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	} else {
		// A reused data dir: the store keeps its id, but listens elsewhere
		// now. Its regions (and their splits) were kept too.
		for _, s := range rm.GetAllStores() {
			s.Address = storeAddr
			_ = pd.PutStore(ctx, s)
		}
	}
	return u, nil
}

func (u *unistore) close() {
	if u.server != nil {
		u.server.Stop()
	}
	u.removeTemp()
}

func (u *unistore) removeTemp() {
	if u.temp {
		_ = os.RemoveAll(filepath.Clean(u.dir))
	}
}

// kvService serves unistore's TiKV implementation as tikvpb.TikvServer.
// unistore's Server has the methods but not the exact interface (one is
// spelled KVPessimisticRollback, and newer RPCs are missing), so the
// transactional RPCs a client uses are forwarded one by one and the rest
// answer Unimplemented.
//
// One difference from TiKV is mended here: unistore stores a delete as an
// empty value, so a key put with an empty value reads as absent, while TiKV
// keeps it (an empty value is a value). So every value written is framed
// with one byte and unframed on the way out, and KvGet's not_found (which
// unistore never sets, and tikv-client reads) is filled in.
//
// Another is regions: unistore checks a request's region id and epoch but
// not its keys, so each request's keys are checked against its region
// first, as TiKV does (KeyNotInRegion), and scans are bounded by it; see
// regions.go.
type kvService struct {
	tikvpb.UnimplementedTikvServer
	us *tikv.Server
	rm *tikv.MockRegionManager
}

// valueFrame prefixes every value unistore stores.
const valueFrame = 'v'

func frame(v []byte) []byte {
	return append([]byte{valueFrame}, v...)
}

func unframe(v []byte) []byte {
	if len(v) > 0 && v[0] == valueFrame {
		return v[1:]
	}
	return v
}

func unframePairs(pairs []*kvrpcpb.KvPair) {
	for _, p := range pairs {
		p.Value = unframe(p.Value)
	}
}

func (s *kvService) KvGet(ctx context.Context, r *kvrpcpb.GetRequest) (*kvrpcpb.GetResponse, error) {
	if e := s.checkKeys(r.Context, r.Key); e != nil {
		return &kvrpcpb.GetResponse{RegionError: e}, nil
	}
	resp, err := s.us.KvGet(ctx, r)
	if err == nil && resp.RegionError == nil && resp.Error == nil {
		resp.NotFound = len(resp.Value) == 0
		resp.Value = unframe(resp.Value)
	}
	return resp, err
}

func (s *kvService) KvBatchGet(ctx context.Context, r *kvrpcpb.BatchGetRequest) (*kvrpcpb.BatchGetResponse, error) {
	if e := s.checkKeys(r.Context, r.Keys...); e != nil {
		return &kvrpcpb.BatchGetResponse{RegionError: e}, nil
	}
	resp, err := s.us.KvBatchGet(ctx, r)
	if err == nil {
		unframePairs(resp.Pairs)
	}
	return resp, err
}

func (s *kvService) KvScan(ctx context.Context, r *kvrpcpb.ScanRequest) (*kvrpcpb.ScanResponse, error) {
	if e := s.checkScan(r); e != nil {
		return &kvrpcpb.ScanResponse{RegionError: e}, nil
	}
	resp, err := s.us.KvScan(ctx, r)
	if err == nil && !r.KeyOnly {
		unframePairs(resp.Pairs)
	}
	return resp, err
}

func (s *kvService) KvPrewrite(ctx context.Context, r *kvrpcpb.PrewriteRequest) (*kvrpcpb.PrewriteResponse, error) {
	if e := s.checkKeys(r.Context, mutationKeys(r.Mutations)...); e != nil {
		return &kvrpcpb.PrewriteResponse{RegionError: e}, nil
	}
	for _, m := range r.Mutations {
		if m.Op == kvrpcpb.Op_Put || m.Op == kvrpcpb.Op_Insert {
			m.Value = frame(m.Value)
		}
	}
	// TiKV keeps a transaction's secondary keys in its primary lock only
	// for async commit (its Prewrite command drops them otherwise).
	// unistore keeps them in every lock, and tikv-client (0.4) sends all
	// of them with every prewrite: each lock of a 1,000-key transaction
	// then carries 1,000 keys, and a read meeting 500 of its locks gets a
	// 45 MB answer, over the client's 4 MiB limit.
	if !r.UseAsyncCommit {
		r.Secondaries = nil
	}
	return s.us.KvPrewrite(ctx, r)
}

func (s *kvService) KvPessimisticLock(ctx context.Context, r *kvrpcpb.PessimisticLockRequest) (*kvrpcpb.PessimisticLockResponse, error) {
	if e := s.checkKeys(r.Context, mutationKeys(r.Mutations)...); e != nil {
		return &kvrpcpb.PessimisticLockResponse{RegionError: e}, nil
	}
	resp, err := s.us.KvPessimisticLock(ctx, r)
	if err == nil {
		for i, v := range resp.Values {
			resp.Values[i] = unframe(v)
		}
		for _, res := range resp.Results {
			res.Value = unframe(res.Value)
		}
	}
	return resp, err
}

func (s *kvService) KvCommit(ctx context.Context, r *kvrpcpb.CommitRequest) (*kvrpcpb.CommitResponse, error) {
	if e := s.checkKeys(r.Context, r.Keys...); e != nil {
		return &kvrpcpb.CommitResponse{RegionError: e}, nil
	}
	return s.us.KvCommit(ctx, r)
}

func (s *kvService) KvPessimisticRollback(ctx context.Context, r *kvrpcpb.PessimisticRollbackRequest) (*kvrpcpb.PessimisticRollbackResponse, error) {
	if e := s.checkKeys(r.Context, r.Keys...); e != nil {
		return &kvrpcpb.PessimisticRollbackResponse{RegionError: e}, nil
	}
	return s.us.KVPessimisticRollback(ctx, r)
}

func (s *kvService) KvBatchRollback(ctx context.Context, r *kvrpcpb.BatchRollbackRequest) (*kvrpcpb.BatchRollbackResponse, error) {
	if e := s.checkKeys(r.Context, r.Keys...); e != nil {
		return &kvrpcpb.BatchRollbackResponse{RegionError: e}, nil
	}
	return s.us.KvBatchRollback(ctx, r)
}

func (s *kvService) KvCleanup(ctx context.Context, r *kvrpcpb.CleanupRequest) (*kvrpcpb.CleanupResponse, error) {
	if e := s.checkKeys(r.Context, r.Key); e != nil {
		return &kvrpcpb.CleanupResponse{RegionError: e}, nil
	}
	return s.us.KvCleanup(ctx, r)
}

func (s *kvService) KvCheckTxnStatus(ctx context.Context, r *kvrpcpb.CheckTxnStatusRequest) (*kvrpcpb.CheckTxnStatusResponse, error) {
	if e := s.checkKeys(r.Context, r.PrimaryKey); e != nil {
		return &kvrpcpb.CheckTxnStatusResponse{RegionError: e}, nil
	}
	return s.us.KvCheckTxnStatus(ctx, r)
}

func (s *kvService) KvCheckSecondaryLocks(ctx context.Context, r *kvrpcpb.CheckSecondaryLocksRequest) (*kvrpcpb.CheckSecondaryLocksResponse, error) {
	if e := s.checkKeys(r.Context, r.Keys...); e != nil {
		return &kvrpcpb.CheckSecondaryLocksResponse{RegionError: e}, nil
	}
	return s.us.KvCheckSecondaryLocks(ctx, r)
}

func (s *kvService) KvTxnHeartBeat(ctx context.Context, r *kvrpcpb.TxnHeartBeatRequest) (*kvrpcpb.TxnHeartBeatResponse, error) {
	if e := s.checkKeys(r.Context, r.PrimaryLock); e != nil {
		return &kvrpcpb.TxnHeartBeatResponse{RegionError: e}, nil
	}
	return s.us.KvTxnHeartBeat(ctx, r)
}

func (s *kvService) KvResolveLock(ctx context.Context, r *kvrpcpb.ResolveLockRequest) (*kvrpcpb.ResolveLockResponse, error) {
	if e := s.checkKeys(r.Context, r.Keys...); e != nil {
		return &kvrpcpb.ResolveLockResponse{RegionError: e}, nil
	}
	return s.us.KvResolveLock(ctx, r)
}

// KvScanLock: unistore scans the whole region, ignoring the request's
// range, and stops at the limit. TiKV scans [start_key, end_key) within
// the region: a client paging through the locks (tikv-client's scan_locks
// and GC clean-up ask again from after the last lock it got) would get the
// region's first locks again and again, forever. So the whole region is
// scanned here, then cut to the range and the limit. A start key outside
// the region is KeyNotInRegion.
func (s *kvService) KvScanLock(ctx context.Context, r *kvrpcpb.ScanLockRequest) (*kvrpcpb.ScanLockResponse, error) {
	if reg := s.regionOf(r.Context); reg != nil && len(r.StartKey) > 0 && !reg.seekable(r.StartKey) {
		return &kvrpcpb.ScanLockResponse{RegionError: reg.notIn(r.StartKey)}, nil
	}
	all := *r
	all.Limit = math.MaxInt32
	resp, err := s.us.KvScanLock(ctx, &all)
	if err != nil || resp.Error != nil || resp.RegionError != nil {
		return resp, err
	}
	locks := resp.Locks[:0]
	for _, l := range resp.Locks {
		if bytes.Compare(l.Key, r.StartKey) < 0 || (len(r.EndKey) > 0 && bytes.Compare(l.Key, r.EndKey) >= 0) {
			continue
		}
		if r.Limit > 0 && len(locks) == int(r.Limit) {
			break
		}
		locks = append(locks, l)
	}
	resp.Locks = locks
	return resp, nil
}

func (s *kvService) KvGC(ctx context.Context, r *kvrpcpb.GCRequest) (*kvrpcpb.GCResponse, error) {
	return s.us.KvGC(ctx, r)
}

// KvDeleteRange: as TiKV, the start key must be in the region and the end
// key no further than its end.
func (s *kvService) KvDeleteRange(ctx context.Context, r *kvrpcpb.DeleteRangeRequest) (*kvrpcpb.DeleteRangeResponse, error) {
	if reg := s.regionOf(r.Context); reg != nil {
		if !reg.holds(r.StartKey) {
			return &kvrpcpb.DeleteRangeResponse{RegionError: reg.notIn(r.StartKey)}, nil
		}
		if reg.bounded && (len(r.EndKey) == 0 || bytes.Compare(r.EndKey, reg.end) > 0) {
			return &kvrpcpb.DeleteRangeResponse{RegionError: reg.notIn(r.EndKey)}, nil
		}
	}
	return s.us.KvDeleteRange(ctx, r)
}

func (s *kvService) UnsafeDestroyRange(ctx context.Context, r *kvrpcpb.UnsafeDestroyRangeRequest) (*kvrpcpb.UnsafeDestroyRangeResponse, error) {
	return s.us.UnsafeDestroyRange(ctx, r)
}

func (s *kvService) SplitRegion(ctx context.Context, r *kvrpcpb.SplitRegionRequest) (*kvrpcpb.SplitRegionResponse, error) {
	return s.us.SplitRegion(ctx, r)
}

// pdService answers the PD RPCs a TiKV client makes, from unistore's own
// region manager, so whatever PD says matches what the store validates.
// Region keys in requests and answers are memcomparable-encoded, as TiDB's
// PD has them (see regions.go).
type pdService struct {
	pdpb.UnimplementedPDServer
	rm  *tikv.MockRegionManager
	pd  *tikv.MockPD
	url string // this PD's client URL, http://HOST:PORT

	tsoMu sync.Mutex
}

func header() *pdpb.ResponseHeader {
	return &pdpb.ResponseHeader{ClusterId: clusterID}
}

func errHeader(t pdpb.ErrorType, format string, args ...any) *pdpb.ResponseHeader {
	h := header()
	h.Error = &pdpb.Error{Type: t, Message: fmt.Sprintf(format, args...)}
	return h
}

// checkCluster refuses requests meant for another cluster (as PD does); a
// zero id (no header) is let through.
func checkCluster(h *pdpb.RequestHeader) error {
	if id := h.GetClusterId(); id != 0 && id != clusterID {
		return status.Errorf(codes.FailedPrecondition, "mismatch cluster id, need %d but got %d", uint64(clusterID), id)
	}
	return nil
}

// GetMembers names this process as the one PD member and the leader.
func (s *pdService) GetMembers(context.Context, *pdpb.GetMembersRequest) (*pdpb.GetMembersResponse, error) {
	me := &pdpb.Member{Name: "pd", MemberId: 1, ClientUrls: []string{s.url}, PeerUrls: []string{s.url}}
	return &pdpb.GetMembersResponse{Header: header(), Members: []*pdpb.Member{me}, Leader: me, EtcdLeader: me}, nil
}

func (s *pdService) GetClusterInfo(context.Context, *pdpb.GetClusterInfoRequest) (*pdpb.GetClusterInfoResponse, error) {
	return &pdpb.GetClusterInfoResponse{Header: header(), ServiceModes: []pdpb.ServiceMode{pdpb.ServiceMode_PD_SVC_MODE}}, nil
}

// Tso answers each TsoRequest for `count` timestamps with the last of
// `count` consecutive logical values on one physical millisecond: clients
// (tikv-client's allocate_timestamps, client-go) hand out
// logical-count+1 ... logical.
func (s *pdService) Tso(stream pdpb.PD_TsoServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			return nil // the client closed the stream, or went away
		} else if err != nil {
			return err
		}
		if err := checkCluster(req.GetHeader()); err != nil {
			return err
		}
		if req.Count == 0 {
			return status.Error(codes.InvalidArgument, "tso count should be positive")
		}
		physical, logical := s.allocTS(req.Count)
		err = stream.Send(&pdpb.TsoResponse{
			Header:    header(),
			Count:     req.Count,
			Timestamp: &pdpb.Timestamp{Physical: physical, Logical: logical},
		})
		if err != nil {
			return err
		}
	}
}

// allocTS takes `count` timestamps from unistore's own clock (tikv.GetTS,
// wall-clock milliseconds plus a logical counter, the clock unistore uses
// for its internal and async-commit timestamps), so nothing this PD hands
// out is ever at or below a timestamp unistore has used. GetTS gives one at
// a time; the batch is retried until `count` of them are consecutive on
// one millisecond, and the last is returned.
func (s *pdService) allocTS(count uint32) (int64, int64) {
	s.tsoMu.Lock()
	defer s.tsoMu.Unlock()
	for {
		p, first := tikv.GetTS()
		last, ok := first, true
		for i := uint32(1); i < count; i++ {
			p2, l := tikv.GetTS()
			if p2 != p || l != last+1 {
				ok = false
				break
			}
			last = l
		}
		if ok {
			return p, last
		}
	}
}

func (s *pdService) GetRegion(ctx context.Context, req *pdpb.GetRegionRequest) (*pdpb.GetRegionResponse, error) {
	if err := checkCluster(req.GetHeader()); err != nil {
		return nil, err
	}
	region, leader := regionByKey(s.rm, req.RegionKey)
	if region == nil {
		return &pdpb.GetRegionResponse{Header: errHeader(pdpb.ErrorType_REGION_NOT_FOUND, "no region for key %x", req.RegionKey)}, nil
	}
	return &pdpb.GetRegionResponse{Header: header(), Region: region, Leader: leader}, nil
}

func (s *pdService) GetPrevRegion(ctx context.Context, req *pdpb.GetRegionRequest) (*pdpb.GetRegionResponse, error) {
	if err := checkCluster(req.GetHeader()); err != nil {
		return nil, err
	}
	region, leader := s.rm.GetRegionByEndKey(req.RegionKey)
	if region == nil {
		return &pdpb.GetRegionResponse{Header: errHeader(pdpb.ErrorType_REGION_NOT_FOUND, "no region ending at key %x", req.RegionKey)}, nil
	}
	return &pdpb.GetRegionResponse{Header: header(), Region: region, Leader: leader}, nil
}

func (s *pdService) GetRegionByID(ctx context.Context, req *pdpb.GetRegionByIDRequest) (*pdpb.GetRegionResponse, error) {
	if err := checkCluster(req.GetHeader()); err != nil {
		return nil, err
	}
	r, err := s.pd.GetRegionByID(ctx, req.RegionId)
	if err != nil {
		return nil, err
	}
	if r == nil || r.Meta == nil {
		return &pdpb.GetRegionResponse{Header: errHeader(pdpb.ErrorType_REGION_NOT_FOUND, "region %d not found", req.RegionId)}, nil
	}
	return &pdpb.GetRegionResponse{Header: header(), Region: r.Meta, Leader: r.Leader}, nil
}

func (s *pdService) ScanRegions(ctx context.Context, req *pdpb.ScanRegionsRequest) (*pdpb.ScanRegionsResponse, error) {
	if err := checkCluster(req.GetHeader()); err != nil {
		return nil, err
	}
	// Regions, and the older region_metas/leaders pair some clients read.
	resp := &pdpb.ScanRegionsResponse{Header: header()}
	resp.Regions = scanRegions(s.rm, req.StartKey, req.EndKey, int(req.Limit))
	for _, r := range resp.Regions {
		resp.RegionMetas = append(resp.RegionMetas, r.Region)
		resp.Leaders = append(resp.Leaders, r.Leader)
	}
	return resp, nil
}

func (s *pdService) GetStore(ctx context.Context, req *pdpb.GetStoreRequest) (*pdpb.GetStoreResponse, error) {
	if err := checkCluster(req.GetHeader()); err != nil {
		return nil, err
	}
	for _, st := range s.rm.GetAllStores() {
		if st.Id == req.StoreId {
			return &pdpb.GetStoreResponse{Header: header(), Store: st}, nil
		}
	}
	return &pdpb.GetStoreResponse{Header: errHeader(pdpb.ErrorType_UNKNOWN, "invalid store ID %d, not found", req.StoreId)}, nil
}

func (s *pdService) GetAllStores(ctx context.Context, req *pdpb.GetAllStoresRequest) (*pdpb.GetAllStoresResponse, error) {
	if err := checkCluster(req.GetHeader()); err != nil {
		return nil, err
	}
	return &pdpb.GetAllStoresResponse{Header: header(), Stores: s.rm.GetAllStores()}, nil
}

func (s *pdService) IsBootstrapped(ctx context.Context, req *pdpb.IsBootstrappedRequest) (*pdpb.IsBootstrappedResponse, error) {
	ok, err := s.pd.IsBootstrapped(ctx)
	if err != nil {
		return nil, err
	}
	return &pdpb.IsBootstrappedResponse{Header: header(), Bootstrapped: ok}, nil
}

func (s *pdService) GetGCSafePoint(ctx context.Context, req *pdpb.GetGCSafePointRequest) (*pdpb.GetGCSafePointResponse, error) {
	sp, err := s.pd.GetGCSafePoint(ctx)
	if err != nil {
		return nil, err
	}
	return &pdpb.GetGCSafePointResponse{Header: header(), SafePoint: sp}, nil
}

// UpdateGCSafePoint records the safe point (never moving it back); unistore
// reads it from its mock PD and drops versions below it when compacting.
func (s *pdService) UpdateGCSafePoint(ctx context.Context, req *pdpb.UpdateGCSafePointRequest) (*pdpb.UpdateGCSafePointResponse, error) {
	if err := checkCluster(req.GetHeader()); err != nil {
		return nil, err
	}
	sp, err := s.pd.UpdateGCSafePoint(ctx, req.SafePoint)
	if err != nil {
		return nil, err
	}
	return &pdpb.UpdateGCSafePointResponse{Header: header(), NewSafePoint: sp}, nil
}
