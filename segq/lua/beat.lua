-- A worker's heartbeat, in one step: its record's heartbeat and the fields that changed (ARGV[3],
-- a JSON object), its place in the index, the expiry of its leases (ARGV[7] on, renewed to
-- ARGV[4]), a try for the fleet's maintenance lock (ARGV[5] its token, ARGV[6] milliseconds; ''
-- not to try), and the release of pending work of the models it serves. Its cost does not grow
-- with the fleet: nothing here reads another worker's record.
-- ARGV: hostname, now, fields, lease expiry, lock token, lock ms, lease tags...
-- Returns {1, lock held (0/1), messages released}, or {-1} when the record is gone (reaped
-- while this worker was cut off): the worker registers again.
local key = '$worker_prefix' .. ARGV[1]
local models = redis.call('HGET', key, 'models')
if not models then return {-1} end
local flat = {}
for field, value in pairs(cjson.decode(ARGV[3])) do
  table.insert(flat, field)
  table.insert(flat, tostring(value))
end
redis.call('HSET', key, 'heartbeat', ARGV[2], unpack(flat))
redis.call('ZADD', '$workers_index', ARGV[2], ARGV[1])
if #ARGV >= 7 then
  local renew = {}
  for i = 7, #ARGV do
    table.insert(renew, ARGV[4])
    table.insert(renew, ARGV[i])
  end
  redis.call('ZADD', '$leases', 'XX', unpack(renew))
end
local held = 0
if ARGV[5] ~= '' and redis.call('SET', '$reaper_lock', ARGV[5], 'NX', 'PX', ARGV[6]) then held = 1 end
local released = 0
for _, model in ipairs(cjson.decode(models)) do
  for _, priority in ipairs(PRIORITIES) do
    if num(redis.call('HGET', PENDING_COUNTS, model .. '|' .. priority)) > 0 then
      released = released + dispatch(model, nil, ARGV[2])
      break
    end
  end
end
return {1, held, released}
