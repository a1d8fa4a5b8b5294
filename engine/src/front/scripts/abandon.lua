-- Gives up a rebuild that failed after it suspended the sale: drops the
-- lease if this rebuild still holds it, so the next purchase finds the
-- sale not loaded and starts a fresh reconcile instead of answering
-- "rebuilding" until the lease expires. The stock stays out of the front.
-- KEYS: 1 rebuild marker
-- ARGV: 1 rebuild token
-- Returns 1 dropped | 0 not held
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
