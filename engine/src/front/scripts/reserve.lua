-- The purchase decision for one sale, atomically. Every key shares the
-- sale's {hash tag}, so this runs on Redis Cluster.
-- KEYS: 1 stock, 2 buyers (hash user -> units held), 3 idempotency (hash
--       field -> "reservation_id|quantity"), 4 stream, 5 pending units,
--       6 rebuild marker
-- ARGV: 1 user, 2 idempotency field, 3 quantity, 4 per-user limit,
--       5 reservation id, 6 now (unix ms), 7 idempotency key
-- Returns {0, remaining} reserved | {1, record} replayed |
--         {2, held} limit exceeded | {3, remaining, records} sold out |
--         {4} stock not loaded (reconcile must run) |
--         {5} stock being rebuilt (a reconcile runs)
local prev = redis.call('HGET', KEYS[3], ARGV[2])
if prev then return {1, prev} end
local stock = redis.call('GET', KEYS[1])
if not stock then
  if redis.call('EXISTS', KEYS[6]) == 1 then return {5} end
  return {4}
end
stock = tonumber(stock)
local qty = tonumber(ARGV[3])
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held + qty > tonumber(ARGV[4]) then return {2, held} end
if stock < qty then return {3, stock, redis.call('HLEN', KEYS[3])} end
redis.call('DECRBY', KEYS[1], qty)
redis.call('INCRBY', KEYS[5], qty)
redis.call('HINCRBY', KEYS[2], ARGV[1], qty)
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5] .. '|' .. ARGV[3])
redis.call('XADD', KEYS[4], '*', 'r', ARGV[5], 'u', ARGV[1], 'q', ARGV[3], 'k', ARGV[7], 't', ARGV[6])
return {0, stock - qty}
