-- A chunk of a video job finished. Records it once (a chunk delivered twice counts once) and, in
-- the same step, the chunk that completes the job's set queues its assembly (ARGV[7], in front
-- of the batch's pending work), exactly once; the chunk's stage seconds go into the histograms
-- (ARGV[8]: segq.metrics.Tally.to_json) when it is recorded. KEYS: job hash, chunk set, chunk
-- info hash. ARGV: index, frames, info JSON, inference seconds, ttl, now, assembly entry, histograms.
-- Returns 0 (duplicate), 1 (recorded), 2 (recorded, and assembly queued).
local added = redis.call('SADD', KEYS[2], ARGV[1])
local batch = redis.call('HGET', KEYS[1], 'batch')
if added == 1 then
  redis.call('HINCRBY', KEYS[1], 'frames_done', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[1], 'inference_s', ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  if batch and batch ~= '' then redis.call('HINCRBY', batch_key(batch), 'frames_done', ARGV[2]) end
  hist_add(ARGV[8])
end
local done = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'chunks_done', done)
local total = tonumber(redis.call('HGET', KEYS[1], 'chunks_total') or '-1')
if done ~= total then return added end
local state = redis.call('HGET', KEYS[1], 'state')
if not state or FINAL[state] then return added end
if redis.call('HSETNX', KEYS[1], 'assembly_queued', ARGV[6]) == 0 then return added end
enqueue(batch, {ARGV[7]}, true)
return 2
