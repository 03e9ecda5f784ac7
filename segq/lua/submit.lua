-- Create jobs of batch ARGV[1] and queue their first tasks, all in one step, skipping inputs the
-- batch already holds (their identity is in the batch's inputs hash: a resubmission, or the same
-- file named twice). ARGV: batch, ttl, now, then the jobs as one JSON array of
-- {"id", "identity", "record": {field: value}, "entry": "<task id> <message>"}.
-- Returns the 1-based positions of the skipped jobs, each with the id that already holds it.
local batch, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local bkey = batch_key(batch)
if redis.call('EXISTS', bkey) == 0 then return redis.error_reply('no batch ' .. batch) end
local jobs = cjson.decode(ARGV[4])
local skipped, entries, added, frames = {}, {}, 0, 0
for i, job in ipairs(jobs) do
  local holder = false
  if job.identity ~= '' then
    if redis.call('HSETNX', batch_inputs_key(batch), job.identity, job.id) == 0 then
      holder = redis.call('HGET', batch_inputs_key(batch), job.identity)
    end
  end
  if holder then
    table.insert(skipped, i)
    table.insert(skipped, holder)
  else
    local key = job_key(job.id)
    local flat = {}
    for field, value in pairs(job.record) do
      table.insert(flat, field)
      table.insert(flat, tostring(value))
    end
    redis.call('HSET', key, unpack(flat))
    redis.call('EXPIRE', key, ttl)
    redis.call('RPUSH', batch_jobs_key(batch), job.id)
    redis.call('ZADD', '$jobs_index', tonumber(job.record.created_at) or now, job.id)
    table.insert(entries, job.entry)
    added = added + 1
    if job.record.kind == 'image' then frames = frames + 1 end
  end
end
if added > 0 then
  redis.call('HINCRBY', bkey, 'jobs', added)
  redis.call('HINCRBY', bkey, 'queued', added)
  redis.call('HINCRBY', bkey, 'frames_total', frames)
  enqueue(batch, entries, false)
end
redis.call('ZREMRANGEBYSCORE', '$jobs_index', '-inf', now - ttl)
return skipped
