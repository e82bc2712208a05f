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
  message, three times); the check reads the one attribute it needs here;
- every message sent to a FIFO queue computed all of the queue's
  attributes (while validating it, and again while adding it) to read one
  flag, content-based deduplication, so filling a FIFO queue took time
  quadratic in its depth; the flag is read directly.

Nothing else in moto's behaviour changes.
"""

import functools
import sys
import threading
import time

import moto.core.utils as core_utils
import moto.sqs.exceptions as sqs_exceptions
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


_add_message = sqs_models.Queue.add_message


def add_message(self, message):
    # Queues with Lambda triggers keep moto's own path.
    if not self.fifo_queue or self.lambda_event_source_mappings:
        return _add_message(self, message)
    content_based = str(self.content_based_deduplication).lower() == "true"
    if content_based or message.deduplication_id:
        for held in self._messages:
            if held.deduplication_id != message.deduplication_id:
                continue
            age = (message.sent_timestamp - held.sent_timestamp) / 1000
            if age < sqs_models.DEDUPLICATION_TIME_IN_SECONDS:
                return
    with self._messages_lock:
        self._messages.append(message)
        self._messages_lock.notify_all()


def validate_message(
    self,
    queue,
    message_body,
    delay_seconds,
    deduplication_id=None,
    group_id=None,
    validate_group_id=True,
):
    # The same checks and errors as moto's, reading the flag directly.
    if queue.fifo_queue:
        content_based = str(queue.content_based_deduplication).lower() == "true"
        if not content_based and not group_id:
            raise sqs_exceptions.MissingParameter("MessageGroupId")
        if not content_based and group_id and not deduplication_id:
            raise sqs_exceptions.InvalidParameterValue(
                "The queue should either have ContentBasedDeduplication enabled or "
                "MessageDeduplicationId provided explicitly"
            )
        if delay_seconds > 0:
            raise sqs_exceptions.InvalidParameterValue(
                f"Value {delay_seconds} for parameter DelaySeconds is invalid. Reason: "
                "The request include parameter that is not valid for this queue type."
            )
    if len(message_body) > queue.maximum_message_size:
        raise sqs_exceptions.InvalidParameterValue(
            "One or more parameters are invalid. Reason: Message must be shorter "
            f"than {queue.maximum_message_size} bytes."
        )
    if group_id is None and queue.fifo_queue:
        raise sqs_exceptions.MissingParameter("MessageGroupId")


sqs_models.Queue.add_message = add_message
sqs_models.SQSBackend._validate_message = validate_message
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
