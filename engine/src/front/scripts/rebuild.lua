-- Commits a rebuild written into temporary keys, atomically, if no newer
-- rebuild started since this one's suspend (two replicas reconciling one
-- sale at once: the later one wins, the earlier one commits nothing).
-- KEYS: 1 stock, 2 rebuild marker, 3 buyers, 4 idempotency, 5 pending,
--       6 returned, 7 new buyers, 8 new idempotency
-- ARGV: 1 rebuild token, 2 remaining
-- Returns 1 committed | 0 superseded
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  redis.call('DEL', KEYS[7], KEYS[8])
  return 0
end
if redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('RENAME', KEYS[7], KEYS[3])
else
  redis.call('DEL', KEYS[3])
end
if redis.call('EXISTS', KEYS[8]) == 1 then
  redis.call('RENAME', KEYS[8], KEYS[4])
else
  redis.call('DEL', KEYS[4])
end
redis.call('SET', KEYS[5], 0)
redis.call('DEL', KEYS[6], KEYS[2])
redis.call('SET', KEYS[1], ARGV[2])
return 1
