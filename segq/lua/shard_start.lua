-- A worker takes shard ARGV[2] of batch ARGV[1]. Queued: it becomes running (the batch's queued
-- images, but those canceled already, become running). Running already (its worker died, or
-- its message came again): one more attempt. Ended: nothing to do. A queued shard of a canceled
-- batch ends at once, every image canceled.
-- ARGV: batch, shard, worker, device, now, ttl.
-- Returns {1, attempt, canceled positions (JSON), first transient failure or 0} to run it,
-- {0, finished} when there is nothing to do (finished: 1 when ending it finished the batch),
-- {-1} when there is no such shard.
local batch, k, now = ARGV[1], ARGV[2], ARGV[5]
local st = shard_get(batch, k)
if not st then return {-1} end
if st.s == 'e' then return {0, 0} end
local bkey = batch_key(batch)
local b = redis.call('HMGET', bkey, 'canceled_at', 'model')
local live = st.n - num(st.xq)
if st.s == 'q' and b[1] then
  incr(bkey, 'queued', -live)
  count_images(batch, b[2] or 'unknown', 0, 0, live)
  st.s, st.e, st.d, st.f, st.c, st.t1 = 'e', 0, 0, 0, st.n, tonumber(now)
  shard_put(batch, k, st)
  return {0, maybe_finish_batch(batch, now, tonumber(ARGV[6]))}
end
if st.s == 'q' then
  incr(bkey, 'queued', -live)
  incr(bkey, 'running', live)
  st.s, st.t0 = 'r', tonumber(now)
end
st.a = num(st.a) + 1
st.w, st.dv = ARGV[3], ARGV[4]
shard_put(batch, k, st)
return {1, st.a, cjson.encode(st.x or {}), num(st.ts)}
