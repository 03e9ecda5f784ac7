-- Shard ARGV[2] of batch ARGV[1], of ARGV[3] images whose list the producer has written to S3
-- (segq.layout.shard_spec_key), joins the batch: its state (queued), its place among the batch's
-- items, the batch's counters (jobs, queued, frames), and its turn: released at once when nothing
-- waits ahead of it (release_now), else behind the batch's pending work (enqueue_shard), and the
-- model's pending work released up to its slots (dispatch). Once: a shard already known is left
-- as it is. With ARGV[5], the submission's last step: the batch is sealed too and its submission
-- lock (token ARGV[5]) given back (batch_seal's work).
-- ARGV: batch, shard, images, now[, token].
-- Returns {1 (added) or 0 (known already), messages released}.
local batch, k, n, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local bkey = batch_key(batch)
local meta = redis.call('HMGET', bkey, 'model', 'task', 'priority')
if not meta[1] then return redis.error_reply('no batch ' .. batch) end
if redis.call('HSETNX', shards_key(batch), k, cjson.encode({s = 'q', n = n, t = tonumber(now)})) == 0 then
  return {0, 0}
end
redis.call('RPUSH', batch_jobs_key(batch), 's' .. k)
redis.call('HINCRBY', bkey, 'jobs', n)
redis.call('HINCRBY', bkey, 'queued', n)
redis.call('HINCRBY', bkey, 'frames_total', n)
if ARGV[5] then
  if redis.call('GET', bkey .. ':submitting') == ARGV[5] then redis.call('DEL', bkey .. ':submitting') end
  redis.call('HSET', bkey, 'sealed', '1')
end
if release_now(batch, meta[1], meta[2], meta[3], tonumber(k), now) == 1 then return {1, 1} end
enqueue_shard(batch, tonumber(k))
return {1, dispatch(meta[1], nil, now)}
