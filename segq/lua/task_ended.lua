-- A task's message was acknowledged (it ran, or was skipped): it is no longer in flight, and its
-- slot releases the next pending work of its model. ARGV: task id, model, target, now.
-- Returns how many messages were released.
redis.call('ZREM', INFLIGHT, ARGV[1])
redis.call('HDEL', INFLIGHT .. ':suspect', ARGV[1])
return dispatch(ARGV[2], tonumber(ARGV[3]), ARGV[4])
