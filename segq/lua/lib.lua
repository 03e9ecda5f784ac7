-- segq's Lua library: prepended to every script by segq.scripts, which fills in the dollar names
-- from segq.keys and segq.states. Every key is derived here, from the names the caller passes.

local FINAL = {$final_states}
local RETRYABLE = {$retryable_states}
local PRIORITIES = {$priorities}

local function job_key(id) return '$job_prefix' .. id end
local function batch_key(name) return '$batch_prefix' .. name end
local function batch_jobs_key(name) return '$batch_prefix' .. name .. ':jobs' end
local function batch_inputs_key(name) return '$batch_prefix' .. name .. ':inputs' end
local function pending_key(name) return '$batch_prefix' .. name .. ':pending' end
local function ring_key(model, priority) return '$ring_prefix' .. model .. ':' .. priority end
local function queue_key(model) return '$queue_prefix' .. model end
local PENDING_COUNTS = '$pending_counts'
local INFLIGHT = '$inflight'
local STATS = '$stats'

local function num(v) return tonumber(v) or 0 end

-- Queue ENTRIES ("<task id> <message>") of BATCH behind its other pending work, or in front of
-- it (FRONT: a video's chunks and its assembly go first, so a started video finishes before the
-- batch's next job begins); the batch joins its model's ring of its priority if it is not in it.
local function enqueue(batch, entries, front)
  if #entries == 0 then return 0 end
  local bkey = batch_key(batch)
  local meta = redis.call('HMGET', bkey, 'model', 'priority')
  local model, priority = meta[1], meta[2]
  if not model then return redis.error_reply('no batch ' .. batch) end
  local pkey = pending_key(batch)
  -- the consuming end is the right one (RPOP): FIFO is LPUSH; the front is RPUSH, in reverse
  if front then
    for i = #entries, 1, -1 do redis.call('RPUSH', pkey, entries[i]) end
  else
    for i = 1, #entries do redis.call('LPUSH', pkey, entries[i]) end
  end
  redis.call('PERSIST', pkey)
  redis.call('HINCRBY', PENDING_COUNTS, model .. '|' .. priority, #entries)
  if redis.call('HSETNX', bkey, 'inring', '1') == 1 then
    -- the ring's consuming end is the right one too: a batch joins at the back of the line
    redis.call('LPUSH', ring_key(model, priority), batch)
  end
  return #entries
end

-- Release work of MODEL into its queue until the queue holds TARGET messages: high before
-- normal before low; within a priority, one task per batch in turn (round robin). Each released
-- task is recorded in flight (INFLIGHT, scored by NOW) for the watchdog. Returns how many moved.
local function dispatch(model, target, now)
  local queue = queue_key(model)
  local length = redis.call('LLEN', queue)
  local moved = 0
  while length < target do
    local released = false
    for _, priority in ipairs(PRIORITIES) do
      local ring = ring_key(model, priority)
      local batch = redis.call('LINDEX', ring, -1)
      while batch do
        local pkey = pending_key(batch)
        local entry = redis.call('RPOP', pkey)
        if entry then
          local sep = string.find(entry, ' ', 1, true)
          redis.call('LPUSH', queue, string.sub(entry, sep + 1))
          redis.call('ZADD', INFLIGHT, now, string.sub(entry, 1, sep - 1))
          redis.call('HINCRBY', PENDING_COUNTS, model .. '|' .. priority, -1)
          if redis.call('LLEN', pkey) == 0 then
            redis.call('RPOP', ring)
            redis.call('HDEL', batch_key(batch), 'inring')
          else
            redis.call('RPOPLPUSH', ring, ring)  -- its turn is over: to the back of the line
          end
          released = true
          break
        end
        -- a batch with nothing pending (canceled, expired): out of the ring
        redis.call('RPOP', ring)
        redis.call('HDEL', batch_key(batch), 'inring')
        batch = redis.call('LINDEX', ring, -1)
      end
      if released then break end
    end
    if not released then break end
    length = length + 1
    moved = moved + 1
  end
  return moved
end

-- A batch with no queued or running job left, once its submission is sealed, is finished: it
-- gets its end time and its keys expire TTL seconds later (as its jobs' records do). Returns 1
-- when it finished now.
local function maybe_finish_batch(batch, now, ttl)
  local bkey = batch_key(batch)
  local b = redis.call('HMGET', bkey, 'queued', 'running', 'sealed', 'finished_at')
  if b[3] ~= '1' or num(b[1]) > 0 or num(b[2]) > 0 or b[4] then return 0 end
  redis.call('HSET', bkey, 'finished_at', now)
  redis.call('SREM', '$active_batches', batch)
  for _, key in ipairs({bkey, batch_jobs_key(batch), batch_inputs_key(batch), pending_key(batch)}) do
    redis.call('EXPIRE', key, ttl)
  end
  return 1
end

-- A job of a batch moved from state FROM to state TO: the batch's counters follow, in the same
-- script as the move. Returns 1 when that finished the batch.
local function count_move(jkey, from, to, now, ttl)
  local batch = redis.call('HGET', jkey, 'batch')
  if not batch or batch == '' then return 0 end
  local bkey = batch_key(batch)
  if redis.call('EXISTS', bkey) == 0 then return 0 end
  if from then redis.call('HINCRBY', bkey, from, -1) end
  redis.call('HINCRBY', bkey, to, 1)
  if FINAL[to] then return maybe_finish_batch(batch, now, ttl) end
  return 0
end

-- A finished batch that gets work again (a retry, a resubmission) is open again: no end time,
-- no expiry.
local function reopen_batch(batch)
  local bkey = batch_key(batch)
  redis.call('HDEL', bkey, 'finished_at', 'manifest_at')
  redis.call('SADD', '$active_batches', batch)
  for _, key in ipairs({bkey, batch_jobs_key(batch), batch_inputs_key(batch), pending_key(batch)}) do
    redis.call('PERSIST', key)
  end
end
