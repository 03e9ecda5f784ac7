-- Worker ARGV[1] writes its whole record (ARGV[3]: a JSON object of its fields) and counts its
-- task slots (ARGV[5]) for each of the models it serves (ARGV[4], a JSON array) in the models'
-- slot counts, the scheduler's targets; what the record counted before (the same process with
-- more models loaded now, or a process restarted in place under the same name) is taken back
-- first, so the counts stay exact. Its heartbeat is its score in the index. ARGV: hostname, now,
-- fields, models, slots. Returns 1.
local key = '$worker_prefix' .. ARGV[1]
local old = redis.call('HMGET', key, 'models', 'concurrency')
if old[1] then
  for _, model in ipairs(cjson.decode(old[1])) do incr(SLOTS, model, -num(old[2])) end
end
redis.call('DEL', key)
local flat = {}
for field, value in pairs(cjson.decode(ARGV[3])) do
  table.insert(flat, field)
  table.insert(flat, tostring(value))
end
redis.call('HSET', key, 'models', ARGV[4], 'concurrency', ARGV[5], unpack(flat))
for _, model in ipairs(cjson.decode(ARGV[4])) do incr(SLOTS, model, tonumber(ARGV[5])) end
redis.call('ZADD', '$workers_index', ARGV[2], ARGV[1])
return 1
