-- Open batch ARGV[1] for a submission: create it, or reopen an existing one of the same task,
-- model and priority (a resubmission adds what it does not hold yet). Unsealed until
-- batch_seal. A new batch claims the image-id namespace ARGV[6] (segq.protocol) and keeps ARGV[7],
-- the message template of its shards (segq.messages.template).
-- ARGV: name, task, model, priority, now, namespace, template.
-- Returns {created (0/1), jobs, namespace, shards}; {-1} when the namespace is taken (draw
-- another); an error naming what does not match.
local name, task, model, priority, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local bkey = batch_key(name)
local have = redis.call('HMGET', bkey, 'task', 'model', 'priority', 'jobs', 'ns', 'shards')
if have[1] then
  if have[1] ~= task or have[2] ~= model then
    return redis.error_reply('batch ' .. name .. ' is a ' .. have[1] .. ' batch on model ' .. have[2] ..
                             ', not ' .. task .. ' on ' .. model .. ': choose another --batch name')
  end
  if have[3] ~= priority then
    return redis.error_reply('batch ' .. name .. ' has priority ' .. have[3] .. ', not ' .. priority ..
                             ': resubmit it with --priority ' .. have[3])
  end
  redis.call('HSET', bkey, 'sealed', '0')
  reopen_batch(name)
  redis.call('SET', message_key(name), ARGV[7], 'NX')
  return {0, num(have[4]), have[5] or '', num(have[6])}
end
if not redis.call('SET', namespace_key(ARGV[6]), name, 'NX') then return {-1} end
redis.call('HSET', bkey, 'name', name, 'task', task, 'model', model, 'priority', priority, 'created_at', now,
           'sealed', '0', 'jobs', 0, 'queued', 0, 'running', 0, 'done', 0, 'failed', 0, 'canceled', 0,
           'frames_total', 0, 'frames_done', 0, 'ns', ARGV[6], 'shards', 0)
redis.call('SET', message_key(name), ARGV[7])
redis.call('ZADD', '$batches_index', now, name)
redis.call('SADD', '$active_batches', name)
return {1, 0, ARGV[6], 0}
