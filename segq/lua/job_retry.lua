-- Back to queued for `segq retry`, from failed or canceled only, as retry number ARGV[2] (the
-- caller built the new first task's message for that number: a concurrent retry makes this one
-- return 0), and queue that message (ARGV[3], "<task id> <message>") behind its batch's pending
-- work, in the same step. Clears the progress of the last run. KEYS[1]: the job.
-- ARGV: now, retry number, entry. Returns the retry number, 0 (not failed or canceled, or
-- retried meanwhile), -1 (no record).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if not RETRYABLE[state] then return 0 end
local n = num(redis.call('HGET', KEYS[1], 'retry')) + 1
if n ~= tonumber(ARGV[2]) then return 0 end
local run = redis.call('HMGET', KEYS[1], 'kind', 'frames_total', 'frames_done', 'batch')
local batch = run[4]
if not batch or batch == '' or redis.call('EXISTS', batch_key(batch)) == 0 then
  return redis.error_reply('job has no batch to queue its retry in')
end
redis.call('HSET', KEYS[1], 'retry', n)
if run[1] == 'video' then  -- the batch counted this run's frames: the next run counts them again
  -- (never HINCRBY by a Lua -0, which Redis refuses as no integer)
  if num(run[2]) ~= 0 then redis.call('HINCRBY', batch_key(batch), 'frames_total', -num(run[2])) end
  if num(run[3]) ~= 0 then redis.call('HINCRBY', batch_key(batch), 'frames_done', -num(run[3])) end
end
redis.call('HDEL', KEYS[1], 'error', 'finished_at', 'started_at', 'frames_done', 'chunks_done', 'inference_s',
           'fps', 'e2e_fps', 'total_s', 'assembly_queued', 'assemblies', 'split_queued', 'split_s',
           'assemble_s', 'segments', 'worker', 'device', 'queue_wait_s', 'transient_since', 'timings', 'frames_total',
           'chunks_total')
redis.call('HSET', KEYS[1], 'state', 'queued', 'created_at', ARGV[1], 'note', 'retry ' .. n .. ' (was ' .. state .. ')')
redis.call('DEL', KEYS[1] .. ':chunks', KEYS[1] .. ':chunkinfo', KEYS[1] .. ':losses')
redis.call('PERSIST', KEYS[1])
reopen_batch(batch)
count_move(KEYS[1], state, 'queued', ARGV[1], 0)
enqueue(batch, {ARGV[3]}, false)
return n
