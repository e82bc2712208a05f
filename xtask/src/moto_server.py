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
- every message sent computed all of the queue's attributes (three
  times for a FIFO queue: on sending, validating and adding it) to read
  one flag, content-based deduplication, so filling a queue took time
  quadratic in its depth; the flag is read directly;
- a delete looked for its receipt handle twice through every queued
  message, building a list of each message's handles, and a batch of ten
  did that ten times; receipt handles are now indexed as moto hands them
  out, and a batch makes one cheap pass to drop its messages, with the
  same outcome for every entry;
- every request listed moto's package directory (a stat per service)
  while holding the server's one dispatch lock, to tell whether the Host
  header names a service; the list is read once;
- werkzeug logged a line per request; only warnings and errors are
  logged.

Nothing else in moto's behaviour changes.
"""

import functools
import hashlib
import logging
import string
import sys
import threading
import time

import moto.backends as moto_backends
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
    if content_based(self) or message.deduplication_id:
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
        if not content_based(queue) and not group_id:
            raise sqs_exceptions.MissingParameter("MessageGroupId")
        if not content_based(queue) and group_id and not deduplication_id:
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


def content_based(queue):
    # What moto's `queue.attributes.get("ContentBasedDeduplication") ==
    # "true"` answers: the attribute exists on FIFO queues only.
    return (
        queue.fifo_queue and str(queue.content_based_deduplication).lower() == "true"
    )


def send_message(
    self,
    queue_name,
    message_body,
    message_attributes=None,
    delay_seconds=None,
    deduplication_id=None,
    group_id=None,
    system_attributes=None,
    validate_group_id=True,
):
    # moto's send, step for step, with the flag read by content_based().
    queue = self.get_queue(queue_name)
    self._validate_message(
        queue,
        message_body=message_body,
        delay_seconds=int(delay_seconds or 0),
        deduplication_id=deduplication_id,
        group_id=group_id,
        validate_group_id=validate_group_id,
    )
    delay = queue.delay_seconds if delay_seconds is None else int(delay_seconds)
    message = sqs_models.Message(
        str(sqs_models.random.uuid4()), message_body, system_attributes
    )
    if content_based(queue):
        message.deduplication_id = hashlib.sha256(
            message_body.encode("utf-8")
        ).hexdigest()
    if deduplication_id is not None:
        message.deduplication_id = deduplication_id
        message.sequence_number = "".join(
            sqs_models.random.choice(string.digits) for _ in range(20)
        )
    if group_id is not None:
        message.group_id = group_id
    if message_attributes:
        message.message_attributes = message_attributes
    if delay > sqs_models.MAXIMUM_MESSAGE_DELAY:
        raise sqs_exceptions.InvalidParameterValue(
            f"Value {delay} for parameter DelaySeconds is invalid. "
            "Reason: DelaySeconds must be >= 0 and <= 900."
        )
    message.mark_sent(delay_seconds=delay)
    queue.add_message(message)
    return message


# Every receipt handle moto hands out, to the message it names (the
# queue's own message, not the copy a receive returns).
_HOLDERS = {}
_mark_received = sqs_models.Message.mark_received


def mark_received(self, visibility_timeout=None):
    _mark_received(self, visibility_timeout)
    _HOLDERS[self.receipt_handle] = self


def delete_message_batch(self, queue_name, receipts):
    # moto's outcome per entry (an already deleted handle succeeds; one
    # no message of this queue ever held fails with
    # ReceiptHandleIsInvalid), found through the handle index.
    queue = self.get_queue(queue_name)
    wanted = {r["ReceiptHandle"] for r in receipts} - queue.deleted_messages
    doomed = {}
    for handle in wanted:
        message = _HOLDERS.get(handle)
        if message is not None:
            doomed[id(message)] = message
    found = set()
    if doomed:
        kept = []
        for message in queue._messages:
            if id(message) not in doomed:
                kept.append(message)
                continue
            handles = message.all_receipt_handles
            found.update(handles)
            queue.pending_messages.discard(message)
            queue.deleted_messages.update(handles)
            for handle in handles:
                _HOLDERS.pop(handle, None)
        queue._messages = kept
    success, errors = [], []
    for entry in receipts:
        handle = entry["ReceiptHandle"]
        if handle in wanted and handle not in found:
            errors.append(
                {
                    "Id": entry["Id"],
                    "SenderFault": True,
                    "Code": "ReceiptHandleIsInvalid",
                    "Message": f'The input receipt handle "{handle}" is not a valid receipt handle.',
                }
            )
        else:
            success.append(entry["Id"])
    return success, errors


def delete_message(self, queue_name, receipt_handle):
    _, errors = delete_message_batch(
        self, queue_name, [{"Id": "0", "ReceiptHandle": receipt_handle}]
    )
    if errors:
        raise sqs_exceptions.ReceiptHandleIsInvalid()


_MOTO_MODULES = tuple(moto_backends.list_of_moto_modules())
moto_backends.list_of_moto_modules = lambda: _MOTO_MODULES
sqs_models.SQSBackend.send_message = send_message
sqs_models.Message.mark_received = mark_received
sqs_models.SQSBackend.delete_message = delete_message
sqs_models.SQSBackend.delete_message_batch = delete_message_batch
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

logging.getLogger("werkzeug").setLevel(logging.WARNING)

from moto.server import main  # noqa: E402

sys.exit(main())
