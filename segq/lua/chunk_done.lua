-- A chunk of a video job finished. Records it once (a chunk delivered twice counts once) and, in
-- the same step, the chunk that completes the job's set queues its assembly (ARGV[7], in front
-- of the batch's pending work), exactly once. With ARGV[8] and ARGV[9], the chunk task's id and
-- delivery tag, its message is done with in the same step and its model's next work released
-- (task_ended's work). KEYS: job hash, chunk set, chunk info hash.
-- ARGV: index, frames, info JSON, inference seconds, ttl, now, assembly entry[, task id, tag].
-- Returns {0 (duplicate), 1 (recorded) or 2 (recorded, and assembly queued), the job's state}.
if ARGV[8] then task_done(ARGV[8], ARGV[9]) end
local added = redis.call('SADD', KEYS[2], ARGV[1])
local batch = redis.call('HGET', KEYS[1], 'batch')
if added == 1 then
  redis.call('HINCRBY', KEYS[1], 'frames_done', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[1], 'inference_s', ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  if batch and batch ~= '' then redis.call('HINCRBY', batch_key(batch), 'frames_done', ARGV[2]) end
end
local done = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'chunks_done', done)
local outcome = added
local total = tonumber(redis.call('HGET', KEYS[1], 'chunks_total') or '-1')
local state = redis.call('HGET', KEYS[1], 'state')
if done == total and state and not FINAL[state] and redis.call('HSETNX', KEYS[1], 'assembly_queued', ARGV[6]) == 1 then
  enqueue(batch, {ARGV[7]}, true)
  outcome = 2
end
if ARGV[8] then dispatch(redis.call('HGET', KEYS[1], 'model'), nil, ARGV[6]) end
return {outcome, state or ''}
