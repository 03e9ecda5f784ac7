-- A video's split step is done: record what it found and queue every chunk task (in front of
-- the batch's other pending work), once: a redelivered split finds them queued and returns 0.
-- Nothing is queued for a final job. KEYS[1]: the job. ARGV: now, frames, the job's fields as a
-- JSON object, the chunk entries as a JSON array. Returns how many chunks it queued.
local state = redis.call('HGET', KEYS[1], 'state')
if not state or FINAL[state] then return 0 end
if redis.call('HSETNX', KEYS[1], 'split_queued', ARGV[1]) == 0 then return 0 end
local flat = {}
for field, value in pairs(cjson.decode(ARGV[3])) do
  table.insert(flat, field)
  table.insert(flat, tostring(value))
end
if #flat > 0 then redis.call('HSET', KEYS[1], unpack(flat)) end
local batch = redis.call('HGET', KEYS[1], 'batch')
local entries = cjson.decode(ARGV[4])
if batch and batch ~= '' and redis.call('EXISTS', batch_key(batch)) == 1 then
  redis.call('HINCRBY', batch_key(batch), 'frames_total', tonumber(ARGV[2]))
  enqueue(batch, entries, true)
  return #entries
end
return redis.error_reply('job has no batch to queue its chunks in')
