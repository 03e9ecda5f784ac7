-- Attempt ARGV[3] of shard ARGV[2] of batch ARGV[1] ended: of its images ARGV[4] done, ARGV[5]
-- failed and ARGV[6] canceled, their results written to S3 under that attempt
-- (segq.layout.shard_result_key). Counted once: the first attempt to end is the shard's (its
-- state names it), a later one changes nothing. The batch's counters and the fleet's counters
-- move in the same step, and the task's message is done with (task_ended's work: out of flight,
-- its lease and kombu's unacknowledged record gone, the model's next work released): ARGV[11] its
-- task id, ARGV[12] its delivery tag. ARGV: batch, shard, attempt, done, failed, canceled, now,
-- ttl, inference seconds, fps, task id, tag, seconds of work per image (the fleet's last
-- measure, segq:stats image_s|<model>: how the producer sizes shards).
-- Returns 1 (ended), 2 (ended, and that finished the batch: write its manifest), 0 (ended
-- already: another attempt counts), -1 (no such shard).
local batch, k, now = ARGV[1], ARGV[2], ARGV[7]
local st = shard_get(batch, k)
if ARGV[11] and ARGV[11] ~= '' then task_done(ARGV[11], ARGV[12]) end
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
  if num(ARGV[13]) > 0 then redis.call('HSET', STATS, 'image_s|' .. model, ARGV[13]) end
end
st.s, st.e, st.d, st.f, st.c, st.t1 = 'e', tonumber(ARGV[3]), done, failed, canceled, tonumber(now)
st.ts = nil
shard_put(batch, k, st)
local finished = maybe_finish_batch(batch, now, tonumber(ARGV[8]))
if ARGV[11] and ARGV[11] ~= '' then dispatch(model, nil, now) end
return 1 + finished
