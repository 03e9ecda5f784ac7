-- Worker ARGV[1] is gone: its record and its place in the index go, and its task slots leave
-- its models' slot counts. With ARGV[2] (the reaper's), only if its last heartbeat is older than
-- that time (a worker that beat meanwhile is live). ARGV: hostname, older than ('' for always).
-- Returns 1 (removed), 0 (live after all).
local key = '$worker_prefix' .. ARGV[1]
local w = redis.call('HMGET', key, 'models', 'concurrency')
local beat = redis.call('ZSCORE', '$workers_index', ARGV[1])
if ARGV[2] ~= '' and beat and tonumber(beat) > tonumber(ARGV[2]) then return 0 end
if w[1] then
  for _, model in ipairs(cjson.decode(w[1])) do incr(SLOTS, model, -num(w[2])) end
end
redis.call('DEL', key)
redis.call('ZREM', '$workers_index', ARGV[1])
return 1
