// Regions: splitting the key space (-split at start, POST /split at run
// time), listing regions, and the checks TiKV makes of a request's keys
// against the region it names.
//
// Key encodings. Region boundaries live in unistore's region manager
// memcomparable-encoded (codec.EncodeBytes of the raw key), as TiDB's
// regions are, and that is what PD reports: a transactional client (TiDB's
// client-go, and tikv-client, which builds its PD client with the codec on
// for TransactionClient) encodes a key before asking PD for its region, and
// decodes the boundaries PD answers with. What a client sends to TiKV (the
// keys of get, prewrite, commit, ...) are raw keys, and unistore decodes
// each region's boundaries to raw ones to read and check them. Split keys
// given to this program (-split, POST /split) are raw keys, the bytes the
// client puts in its requests; they are encoded here.

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/pingcap/tidb/pkg/store/mockstore/unistore/tikv"
	"github.com/pingcap/tidb/pkg/util/codec"
	"google.golang.org/grpc"
)

// parseKey reads a raw key written with %XX escapes (URL percent-decoding:
// any byte can be written; '+' is a plus, not a space). An empty key is
// refused: the key space already starts there.
func parseKey(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("empty key")
	}
	k, err := url.PathUnescape(s)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", s, err)
	}
	return []byte(k), nil
}

// parseKeys reads each of keys with parseKey.
func parseKeys(keys []string) ([][]byte, error) {
	out := make([][]byte, 0, len(keys))
	for _, s := range keys {
		k, err := parseKey(s)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

// escapeKey writes a raw key in the form parseKey reads: printable ASCII as
// it is, other bytes and '%' and ',' (the -split separator) as %XX.
func escapeKey(k []byte) string {
	var b strings.Builder
	for _, c := range k {
		if c > ' ' && c < 0x7f && c != '%' && c != ',' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// split splits the region holding each raw key at that key: afterwards
// keys below it and keys from it on are in different regions. A key that
// already starts a region is left alone. The region keeps its id and the
// part below the key, with its epoch version one up; the part from the key
// on is a new region (new id, epoch 1/1), on the same store. Splits are
// serialized here; unistore's region manager takes its own lock for each,
// so requests are served throughout (those naming the old epoch then get
// EpochNotMatch).
func (u *unistore) split(keys [][]byte) error {
	keys = slices.Clone(keys)
	slices.SortFunc(keys, bytes.Compare)
	keys = slices.CompactFunc(keys, bytes.Equal)

	u.splitMu.Lock()
	defer u.splitMu.Unlock()
	for _, k := range keys {
		enc := codec.EncodeBytes(nil, k)
		// A client's SplitRegion RPC can split concurrently (and bump the
		// epoch under us): look the region up again then.
		for attempt := 0; ; attempt++ {
			region, leader := regionByKey(u.rm, enc)
			if region == nil {
				return fmt.Errorf("split at %q: no region holds it", k)
			}
			if bytes.Equal(region.StartKey, enc) {
				break // already a boundary
			}
			resp := u.rm.SplitRegion(&kvrpcpb.SplitRegionRequest{
				Context:   &kvrpcpb.Context{RegionId: region.Id, RegionEpoch: region.RegionEpoch, Peer: leader},
				SplitKeys: [][]byte{k}, // raw: SplitRegion encodes them
			})
			if e := resp.RegionError; e != nil {
				if e.EpochNotMatch != nil && attempt < 10 {
					continue
				}
				return fmt.Errorf("split at %q: %s", k, e.Message)
			}
			break
		}
	}
	return nil
}

// regionByKey is the region holding an (encoded) key and its leader, nil
// if none. PD answers an empty key with the first region; unistore's lookup
// misses it when one region covers everything (its end key is empty too),
// so it is looked up as "\x00", which sorts below every boundary (encoded
// keys are 9-byte groups, so none is "\x00" or shorter).
func regionByKey(rm *tikv.MockRegionManager, key []byte) (*metapb.Region, *metapb.Peer) {
	if len(key) == 0 {
		key = []byte{0}
	}
	region, leader, _, _ := rm.GetRegionByKey(key)
	return region, leader
}

// scanRegions lists the regions overlapping [start, end) (encoded keys; an
// empty end is no bound), from the one holding start, at most limit of them
// (0: all). Regions are followed by their end keys, each looked up on its
// own: a split meanwhile only adds boundaries, so the list stays contiguous.
func scanRegions(rm *tikv.MockRegionManager, start, end []byte, limit int) []*pdpb.Region {
	var out []*pdpb.Region
	key := start
	for {
		region, leader := regionByKey(rm, key)
		if region == nil {
			return out
		}
		out = append(out, &pdpb.Region{Region: region, Leader: leader})
		if len(region.EndKey) == 0 || (len(end) > 0 && bytes.Compare(region.EndKey, end) >= 0) ||
			(limit > 0 && len(out) >= limit) {
			return out
		}
		key = region.EndKey
	}
}

// rawRegion is a region as the admin endpoints show it: raw (decoded)
// boundaries, percent-escaped; an empty end is the end of the key space.
type rawRegion struct {
	ID      uint64 `json:"id"`
	Start   string `json:"start"`
	End     string `json:"end"`
	Version uint64 `json:"version"`
	ConfVer uint64 `json:"conf_ver"`
}

func (u *unistore) rawRegions() ([]rawRegion, error) {
	var out []rawRegion
	for _, r := range scanRegions(u.rm, nil, nil, 0) {
		start, err := decodeBound(r.Region.StartKey)
		if err != nil {
			return nil, err
		}
		end, err := decodeBound(r.Region.EndKey)
		if err != nil {
			return nil, err
		}
		out = append(out, rawRegion{
			ID:      r.Region.Id,
			Start:   escapeKey(start),
			End:     escapeKey(end),
			Version: r.Region.RegionEpoch.GetVersion(),
			ConfVer: r.Region.RegionEpoch.GetConfVer(),
		})
	}
	return out, nil
}

func decodeBound(enc []byte) ([]byte, error) {
	if len(enc) == 0 {
		return nil, nil
	}
	_, raw, err := codec.DecodeBytes(enc, nil)
	return raw, err
}

// admin is the HTTP admin listener (-admin):
//
//	POST /split    body: raw split keys, one a line, %XX escapes allowed;
//	               answers the regions after the split (as GET /regions),
//	               400 for an empty or undecodable key
//	GET  /regions  the regions, sorted by start: JSON array of
//	               {"id","start","end","version","conf_ver"}
//	POST /orphan   body: raw keys, one a line; query: primary=KEY (raw, %XX
//	               escapes allowed), age=DURATION (Go syntax, default 1m).
//	               Leaves what a writer killed in the middle of a prewrite
//	               across regions leaves: each key prewritten (a put, 3 s
//	               TTL) by a transaction that started age ago and never
//	               wrote its primary KEY. With primary_ttl=DURATION the
//	               primary is prewritten too, first, with that TTL: a
//	               writer still at work whose heartbeats keep its primary
//	               alive while its secondaries' 3 s TTLs have passed.
//	               Answers {"start_ts":N}; 400 for a bad key, age or
//	               primary_ttl, 409 with unistore's answer when a key is
//	               locked or was written after that start
type admin struct {
	u *unistore
}

func (a *admin) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /split", a.postSplit)
	mux.HandleFunc("GET /regions", a.getRegions)
	mux.HandleFunc("POST /orphan", a.postOrphan)
	return mux
}

func (a *admin) postSplit(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// One key a line; a last line end is not an empty key after it.
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	keys, err := parseKeys(lines)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := a.u.split(keys); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	a.getRegions(w, r)
}

func (a *admin) postOrphan(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	keys, err := parseKeys(strings.Split(strings.TrimSuffix(string(body), "\n"), "\n"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	primary, err := parseKey(r.URL.Query().Get("primary"))
	if err != nil {
		http.Error(w, "primary: "+err.Error(), http.StatusBadRequest)
		return
	}
	age := time.Minute
	if v := r.URL.Query().Get("age"); v != "" {
		if age, err = time.ParseDuration(v); err != nil || age < 0 {
			http.Error(w, fmt.Sprintf("age %q: a duration such as 30s", v), http.StatusBadRequest)
			return
		}
	}
	var primaryTTL time.Duration
	if v := r.URL.Query().Get("primary_ttl"); v != "" {
		if primaryTTL, err = time.ParseDuration(v); err != nil || primaryTTL <= 0 {
			http.Error(w, fmt.Sprintf("primary_ttl %q: a duration such as 10m", v), http.StatusBadRequest)
			return
		}
		keys = append([][]byte{primary}, keys...)
	}
	startTS := uint64(time.Now().Add(-age).UnixMilli()) << 18
	for i, k := range keys {
		ttl := uint64(3000)
		if primaryTTL > 0 && i == 0 {
			ttl = uint64(primaryTTL.Milliseconds())
		}
		region, leader := regionByKey(a.u.rm, codec.EncodeBytes(nil, k))
		if region == nil {
			http.Error(w, fmt.Sprintf("no region holds %q", k), http.StatusInternalServerError)
			return
		}
		resp, err := a.u.server.KvPrewrite(r.Context(), &kvrpcpb.PrewriteRequest{
			Context:      &kvrpcpb.Context{RegionId: region.Id, RegionEpoch: region.RegionEpoch, Peer: leader},
			Mutations:    []*kvrpcpb.Mutation{{Op: kvrpcpb.Op_Put, Key: k, Value: frame([]byte("orphan"))}},
			PrimaryLock:  primary,
			StartVersion: startTS,
			LockTtl:      ttl,
		})
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		case resp.RegionError != nil:
			http.Error(w, resp.RegionError.String(), http.StatusInternalServerError)
			return
		case len(resp.Errors) > 0:
			http.Error(w, fmt.Sprintf("%q: %v", k, resp.Errors), http.StatusConflict)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]uint64{"start_ts": startTS})
}

func (a *admin) getRegions(w http.ResponseWriter, _ *http.Request) {
	regions, err := a.u.rawRegions()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(regions)
}

// serveAdmin serves the admin endpoints on lis until cluster.stop shuts
// the server down.
func serveAdmin(lis net.Listener, u *unistore, errs chan<- error) *http.Server {
	srv := &http.Server{Handler: (&admin{u: u}).handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			errs <- err
		}
	}()
	return srv
}

// span is the region a request names, with its raw bounds, when the
// request's region epoch is current.
type span struct {
	meta    *metapb.Region
	start   []byte
	end     []byte // raw end key; meaningful only if bounded
	bounded bool   // false for the last region
}

// regionOf is the region a request's context names, nil if that region is
// unknown, on another store or of another epoch: unistore answers those
// itself (RegionNotFound, StoreNotMatch, EpochNotMatch), as TiKV does,
// before it reads or writes anything.
func (s *kvService) regionOf(rctx *kvrpcpb.Context) *span {
	if rctx == nil {
		return nil
	}
	ri, err := s.rm.GetRegionFromCtx(rctx)
	if err != nil {
		return nil
	}
	meta := ri.Meta()
	return &span{meta: meta, start: ri.RawStart(), end: ri.RawEnd(), bounded: len(meta.EndKey) > 0}
}

// holds: start <= key < end (TiKV's check_key_in_region).
func (r *span) holds(key []byte) bool {
	return bytes.Compare(key, r.start) >= 0 && (!r.bounded || bytes.Compare(key, r.end) < 0)
}

// seekable: start <= key <= end (TiKV's check for the key a scan seeks to,
// check_key_in_region_inclusive).
func (r *span) seekable(key []byte) bool {
	return bytes.Compare(key, r.start) >= 0 && (!r.bounded || bytes.Compare(key, r.end) <= 0)
}

// notIn is TiKV's region error for a key outside the region.
func (r *span) notIn(key []byte) *errorpb.Error {
	return &errorpb.Error{
		Message: fmt.Sprintf("key %q is not in region %d", key, r.meta.Id),
		KeyNotInRegion: &errorpb.KeyNotInRegion{
			Key: key, RegionId: r.meta.Id, StartKey: r.meta.StartKey, EndKey: r.meta.EndKey,
		},
	}
}

// checkKeys answers KeyNotInRegion for the first key outside the region
// the request names (TiKV checks every key it reads or writes); nil if all
// are in it, or if unistore will refuse the request for its region anyway.
// A split between this check and unistore's own makes unistore answer
// EpochNotMatch, so a request never runs on a region it does not fit.
func (s *kvService) checkKeys(rctx *kvrpcpb.Context, keys ...[]byte) *errorpb.Error {
	r := s.regionOf(rctx)
	if r == nil {
		return nil
	}
	for _, k := range keys {
		if !r.holds(k) {
			return r.notIn(k)
		}
	}
	return nil
}

func mutationKeys(ms []*kvrpcpb.Mutation) [][]byte {
	keys := make([][]byte, len(ms))
	for i, m := range ms {
		keys[i] = m.Key
	}
	return keys
}

// checkScan checks a KvScan's range as TiKV does, and bounds it by the
// region (TiKV reads through a snapshot of the region; unistore would read
// past its end). Forward, [start_key, end_key): start_key is where the scan
// seeks and must be in the region; end_key is cut to the region's end.
// Reverse, [end_key, start_key): a non-empty start_key must be in the
// region or be its end; end_key is raised to the region's start. An empty
// start_key in the last region is unistore's internal key prefix (0xff):
// unistore's own reverse scan would read its region and store records
// there (its forward scans stop at it).
func (s *kvService) checkScan(r *kvrpcpb.ScanRequest) *errorpb.Error {
	reg := s.regionOf(r.Context)
	if reg == nil {
		return nil
	}
	if !r.Reverse {
		if !reg.seekable(r.StartKey) {
			return reg.notIn(r.StartKey)
		}
		if reg.bounded && (len(r.EndKey) == 0 || bytes.Compare(r.EndKey, reg.end) > 0) {
			r.EndKey = reg.end
		}
		return nil
	}
	if len(r.StartKey) > 0 && !reg.seekable(r.StartKey) {
		return reg.notIn(r.StartKey)
	}
	if len(r.StartKey) == 0 {
		r.StartKey = tikv.InternalKeyPrefix
		if reg.bounded {
			r.StartKey = reg.end
		}
	}
	if bytes.Compare(r.EndKey, reg.start) < 0 {
		r.EndKey = reg.start
	}
	return nil
}

// withSibling is a gRPC interceptor for the TiKV service: to an
// EpochNotMatch naming one current region it adds the region right after
// it, as TiKV adds the region a split may have made from the one asked
// for (unistore keeps the left part under the old id, like TiKV with
// right-derive off), so a client can refresh both from the one error.
func (s *kvService) withSibling(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	r, ok := resp.(interface{ GetRegionError() *errorpb.Error })
	if err != nil || !ok {
		return resp, err
	}
	enm := r.GetRegionError().GetEpochNotMatch()
	if enm == nil || len(enm.CurrentRegions) != 1 {
		return resp, err
	}
	if end := enm.CurrentRegions[0].EndKey; len(end) > 0 {
		if sibling, _ := regionByKey(s.rm, end); sibling != nil && bytes.Equal(sibling.StartKey, end) {
			enm.CurrentRegions = append(enm.CurrentRegions, sibling)
		}
	}
	return resp, err
}
