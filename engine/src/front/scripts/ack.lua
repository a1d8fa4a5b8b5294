-- Acknowledges settled stream entries and drops them; an entry's units
-- leave the pending count only when its XACK took effect, so a replayed
-- acknowledgement (or one after a rebuild) subtracts nothing.
-- KEYS: 1 stream, 2 pending units
-- ARGV: 1 group, then pairs of (entry id, quantity)
local settled = 0
for i = 2, #ARGV, 2 do
  local acked = redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[i])
  if type(acked) == 'number' and acked == 1 then
    settled = settled + tonumber(ARGV[i + 1])
  end
  redis.call('XDEL', KEYS[1], ARGV[i])
end
if settled > 0 then redis.call('DECRBY', KEYS[2], settled) end
return settled
