"""moto_server for the SQS tests and benches, made thread-safe and faster.

moto's server answers each request on its own thread, but its SQS model
takes no lock: a DeleteMessage rebuilds the queue's message list from a
copy, so a send or another delete running at the same moment is undone
(a sent message vanishes, a deleted one comes back a visibility timeout
later). Real SQS does neither, and the suite's concurrent cases tripped on
it. Here every call that reads or changes a queue's messages holds that
queue's lock; a long poll waits outside it, as moto's own loop does.

Two speed-ups keep the 10,000-message cases from running at about 60
messages/s (moto's cost grows with the queue's depth):

- moto reads the time through moto.core.utils.unix_time, which builds two
  datetimes per call, several times per queued message per receive;
  time.time() gives the same value (seconds since the epoch, UTC) a hundred
  times faster;
- for every message a receive returns it checks the retention period by
  computing all of the queue's attributes (three passes over every queued
  message, three times); the check reads the one attribute it needs here.

Nothing else in moto's behaviour changes.
"""

import functools
import sys
import threading
import time

import moto.core.utils as core_utils
import moto.sqs.models as sqs_models

_datetime_unix_time = core_utils.unix_time


def unix_time(dt=None):
    return time.time() if dt is None else _datetime_unix_time(dt)


def unix_time_millis(dt=None):
    return unix_time(dt) * 1000.0


def is_message_valid_based_on_retention_period(self, queue_name, message):
    queue = self.get_queue(queue_name)
    retain_until = queue.message_retention_period + message.sent_timestamp / 1000
    return retain_until > unix_time()


sqs_models.unix_time = unix_time
sqs_models.unix_time_millis = unix_time_millis
Backend = sqs_models.SQSBackend
Backend.is_message_valid_based_on_retention_period = (
    is_message_valid_based_on_retention_period
)

# One lock per queue name: calls on different queues (the suite's
# parallel cases) never wait for each other.
_LOCKS = {}
_LOCKS_GUARD = threading.Lock()


def queue_lock(queue_name):
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(queue_name, threading.RLock())


def locked(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        name = kwargs["queue_name"] if "queue_name" in kwargs else args[0]
        with queue_lock(name):
            return method(self, *args, **kwargs)

    return call


for name in (
    "delete_queue",
    "get_queue_attributes",
    "set_queue_attributes",
    "send_message",
    "send_message_batch",
    "delete_message",
    "delete_message_batch",
    "change_message_visibility",
    "change_message_visibility_batch",
    "purge_queue",
):
    setattr(Backend, name, locked(getattr(Backend, name)))

_receive_once = locked(Backend.receive_message)


def receive_message(
    self,
    queue_name,
    count,
    wait_seconds_timeout,
    visibility_timeout,
    message_attribute_names=None,
):
    polling_end = time.time() + wait_seconds_timeout
    while True:
        result = _receive_once(
            self, queue_name, count, 0, visibility_timeout, message_attribute_names
        )
        left = polling_end - time.time()
        if result or left <= 0:
            return result
        self.get_queue(queue_name).wait_for_messages(min(1.0, left))


Backend.receive_message = receive_message

from moto.server import main  # noqa: E402

sys.exit(main())
