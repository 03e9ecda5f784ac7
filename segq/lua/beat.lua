-- A worker's heartbeat, in one step: its place in the index (the index's score is its last
-- heartbeat), the fields of its record that changed (ARGV[3], a JSON object, or ''), the
-- histogram observations of the work it did since its last beat (ARGV[7]:
-- segq.metrics.Tally.to_json, or ''), the expiry of its leases (ARGV[9] on, renewed to ARGV[4]),
-- a try for the fleet's maintenance lock (ARGV[5] its token, ARGV[6] milliseconds; '' not to
-- try), and the release of pending work of the models it serves (ARGV[8], comma-separated). Its
-- cost does not grow with the fleet: nothing here reads another worker's record, and an idle
-- worker's beat is three commands.
-- ARGV: hostname, now, fields, lease expiry, lock token, lock ms, histograms, models, lease tags...
-- Returns {1, lock taken (0/1), messages released}, or {-1} when the worker is no longer in the
-- index (reaped while it was cut off): it registers again.
if redis.call('ZADD', '$workers_index', 'XX', 'CH', ARGV[2], ARGV[1]) == 0 then return {-1} end
if ARGV[3] ~= '' then
  local flat = {}
  for field, value in pairs(cjson.decode(ARGV[3])) do
    table.insert(flat, field)
    table.insert(flat, tostring(value))
  end
  if #flat > 0 then redis.call('HSET', '$worker_prefix' .. ARGV[1], unpack(flat)) end
end
hist_add(ARGV[7])
if #ARGV >= 9 then
  local renew = {}
  for i = 9, #ARGV do
    table.insert(renew, ARGV[4])
    table.insert(renew, ARGV[i])
  end
  redis.call('ZADD', '$leases', 'XX', unpack(renew))
end
local held = 0
if ARGV[5] ~= '' and redis.call('SET', '$reaper_lock', ARGV[5], 'NX', 'PX', ARGV[6]) then held = 1 end
local released = 0
for model in string.gmatch(ARGV[8], '[^,]+') do
  local fields = {}
  for i, priority in ipairs(PRIORITIES) do fields[i] = model .. '|' .. priority end
  for _, n in ipairs(redis.call('HMGET', PENDING_COUNTS, unpack(fields))) do
    if num(n) > 0 then
      released = released + dispatch(model, nil, ARGV[2])
      break
    end
  end
end
return {1, held, released}
