-- Commits a rebuild written into this rebuild's own temporary keys,
-- atomically, if it still holds the lease (a lease that expired and was
-- taken by another rebuild commits nothing).
-- KEYS: 1 stock, 2 rebuild marker, 3 buyers, 4 idempotency, 5 pending,
--       6 returned, 7 new buyers, 8 new idempotency, 9 new returned
-- ARGV: 1 rebuild token, 2 remaining
-- Returns 1 committed | 0 superseded
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  redis.call('DEL', KEYS[7], KEYS[8], KEYS[9])
  return 0
end
local pairs = {{7, 3}, {8, 4}, {9, 6}}
for _, p in ipairs(pairs) do
  if redis.call('EXISTS', KEYS[p[1]]) == 1 then
    redis.call('RENAME', KEYS[p[1]], KEYS[p[2]])
  else
    redis.call('DEL', KEYS[p[2]])
  end
end
redis.call('SET', KEYS[5], 0)
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2])
return 1
