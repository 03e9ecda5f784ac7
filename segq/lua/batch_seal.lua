-- The submission of batch ARGV[1] is complete: seal it, so that it finishes once no job of it
-- is queued or running, and give its submission lock back (token ARGV[4]). ARGV: name, now, ttl,
-- token. Returns 1 when it is finished now (write the manifest), 0 otherwise, -1 when there is no
-- such batch.
local bkey = batch_key(ARGV[1])
if ARGV[4] and redis.call('GET', bkey .. ':submitting') == ARGV[4] then redis.call('DEL', bkey .. ':submitting') end
if redis.call('EXISTS', bkey) == 0 then return -1 end
redis.call('HSET', bkey, 'sealed', '1')
return maybe_finish_batch(ARGV[1], ARGV[2], tonumber(ARGV[3]))
