-- KEYS: semaphore. Returns the number of slots not yet expired.
return redis.call('ZCOUNT', KEYS[1], '(' .. int(now_us()), '+inf')
