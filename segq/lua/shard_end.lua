-- Attempt ARGV[3] of shard ARGV[2] of batch ARGV[1] ended: of its images ARGV[4] done, ARGV[5]
-- failed and ARGV[6] canceled, their results written to S3 under that attempt
-- (segq.layout.shard_result_key). Counted once: the first attempt to end is the shard's (its
-- state names it), a later one changes nothing. The batch's counters, the fleet's counters and
-- histograms (ARGV[11]: segq.metrics.Tally.to_json) move in the same step.
-- ARGV: batch, shard, attempt, done, failed, canceled, now, ttl, inference seconds, fps, histograms.
-- Returns 1 (ended), 2 (ended, and that finished the batch: write its manifest), 0 (ended
-- already: another attempt counts), -1 (no such shard).
local batch, k, now = ARGV[1], ARGV[2], ARGV[7]
local st = shard_get(batch, k)
if not st then return -1 end
if st.s == 'e' then return 0 end
local done, failed, canceled = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local bkey = batch_key(batch)
local model = redis.call('HGET', bkey, 'model') or 'unknown'
local live = st.n - num(st.xq)
incr(bkey, st.s == 'q' and 'queued' or 'running', -live)
-- images canceled while the shard was queued were counted then (shard_cancel)
count_images(batch, model, done, failed, canceled - num(st.xq))
if done > 0 then
  redis.call('HINCRBYFLOAT', STATS, 'inference_s|' .. model, ARGV[9])
  if num(ARGV[10]) > 0 then redis.call('HSET', STATS, 'last_fps|image|' .. model, ARGV[10]) end
end
hist_add(ARGV[11])
st.s, st.e, st.d, st.f, st.c, st.t1 = 'e', tonumber(ARGV[3]), done, failed, canceled, tonumber(now)
st.ts = nil
shard_put(batch, k, st)
return 1 + maybe_finish_batch(batch, now, tonumber(ARGV[8]))
