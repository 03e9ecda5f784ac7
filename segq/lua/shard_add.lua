-- Shard ARGV[2] of batch ARGV[1], of ARGV[3] images whose list the producer has written to S3
-- (segq.layout.shard_spec_key), joins the batch: its state (queued), its place among the batch's
-- items, the batch's counters (jobs, queued, frames), and its release in turn (enqueue_shard).
-- Once: a shard already known is left as it is. ARGV: batch, shard, images, now.
-- Returns 1 (added), 0 (known already).
local batch, k, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local bkey = batch_key(batch)
if redis.call('EXISTS', bkey) == 0 then return redis.error_reply('no batch ' .. batch) end
if redis.call('HSETNX', shards_key(batch), k, cjson.encode({s = 'q', n = n, t = tonumber(ARGV[4])})) == 0 then
  return 0
end
redis.call('RPUSH', batch_jobs_key(batch), 's' .. k)
redis.call('HINCRBY', bkey, 'jobs', n)
redis.call('HINCRBY', bkey, 'queued', n)
redis.call('HINCRBY', bkey, 'frames_total', n)
enqueue_shard(batch, tonumber(k))
return 1
