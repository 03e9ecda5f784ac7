-- Cancel batch ARGV[1]: mark it canceled (a shard that starts from now on ends at once, a running
-- one stops at its next look, within a second) and drop its pending work, up to ARGV[4] shards a
-- call (a queued shard ends with its images canceled); a video's pending message is dropped
-- (the caller cancels video jobs through their records). ARGV: name, now, ttl, budget.
-- Returns {video messages dropped, shards ended, pending entries left (call again), finished}.
local batch, now, ttl, budget = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local bkey = batch_key(batch)
local meta = redis.call('HMGET', bkey, 'model', 'priority', 'canceled_at')
if not meta[1] then return {0, 0, 0, 0} end
if not meta[3] then redis.call('HSET', bkey, 'canceled_at', now) end
local pcount = meta[1] .. '|' .. meta[2]
local pkey = pending_key(batch)
local dropped, ended = 0, 0
while budget > 0 do
  local entry = redis.call('RPOP', pkey)
  if not entry then break end
  if string.sub(entry, 1, 1) == '@' then
    local first, last = string.match(entry, '^@(%d+) (%d+)$$')
    first, last = tonumber(first), tonumber(last)
    local upto = math.min(last, first + budget - 1)
    for k = first, upto do
      local st = shard_get(batch, tostring(k))
      if st and st.s == 'q' then
        local live = st.n - num(st.xq)
        incr(bkey, 'queued', -live)
        count_images(batch, meta[1], 0, 0, live)
        st.s, st.e, st.d, st.f, st.c, st.t1 = 'e', 0, 0, 0, st.n, tonumber(now)
        shard_put(batch, tostring(k), st)
      end
    end
    ended = ended + upto - first + 1
    budget = budget - (upto - first + 1)
    redis.call('HINCRBY', PENDING_COUNTS, pcount, -(upto - first + 1))
    if upto < last then redis.call('RPUSH', pkey, '@' .. (upto + 1) .. ' ' .. last) end
  else
    dropped = dropped + 1
    redis.call('HINCRBY', PENDING_COUNTS, pcount, -1)
  end
end
local left = redis.call('LLEN', pkey)
if left == 0 then
  redis.call('LREM', ring_key(meta[1], meta[2]), 0, batch)
  redis.call('HDEL', bkey, 'inring')
end
return {dropped, ended, left, maybe_finish_batch(batch, now, ttl)}
