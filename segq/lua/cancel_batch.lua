-- Drop the pending (not yet released) work of batch ARGV[1]: its jobs are being canceled.
-- Returns how many pending messages were dropped.
local bkey = batch_key(ARGV[1])
local meta = redis.call('HMGET', bkey, 'model', 'priority')
if not meta[1] then return 0 end
local pkey = pending_key(ARGV[1])
local n = redis.call('LLEN', pkey)
redis.call('DEL', pkey)
if n > 0 then redis.call('HINCRBY', PENDING_COUNTS, meta[1] .. '|' .. meta[2], -n) end
redis.call('LREM', ring_key(meta[1], meta[2]), 0, ARGV[1])
redis.call('HDEL', bkey, 'inring')
return n
