"""Training on TensorFlow's own cluster runtime: parameter servers hold the variables, workers
run steps asynchronously (between-graph replication), and worker 0, the chief, alone
initializes or restores and publishes, through the same ``Publisher`` and commit protocol as a
producer alone. Not ``CheckpointSaverHook``: it uses ``Saver.save``'s unsafe order. The other
workers train only while the chief answers (``ChiefWatch``): steps nobody publishes are waste.

The training meta graphs keep the device strings TF gives them (``/job:ps/task:0``); a consumer
clears them on import. The serving graph is built without devices.
"""

from __future__ import annotations

import re
import socket
import threading
import time

from producer.cluster import ClusterFailure, Role
from producer.train import (Config, Schedule, clean, dataset_for, log, log_start, publisher_for,
                            serving_for)
from shared import contract, layout, models
from shared.tfcompat import tf, v1

CHIEF_CHECK = 0.5  # seconds between a non-chief worker's looks at the chief's server
WAIT_CHECK = 0.2  # seconds between its looks at a signal and the global step while it waits
ABORTS_IN_A_ROW = 3  # an aborted run is tried again this many times before the task gives up

# What a session run raises when a task of the cluster is gone or stops answering.
LOST = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
        tf.errors.CancelledError)


def start_server(role: Role) -> v1.train.Server:
    """This task's gRPC server, on its address's port (TF listens on every interface)."""
    try:
        return v1.train.Server(v1.train.ClusterSpec(role.cluster), job_name=role.job,
                               task_index=role.task)
    except tf.errors.OpError as err:
        raise ClusterFailure(f"{role.name} cannot listen on {role.address}: {err.message} "
                             "(is the port in use?)") from None


def serve_ps(role: Role, stop: threading.Event) -> None:
    """A parameter server: hold the variables until stopped."""
    server = start_server(role)
    log.info("ps_started", task=role.name, address=role.address, target=server.target)
    stop.wait()
    log.info("ps_stopped", task=role.name)


def wait_for_ps(role: Role, timeout: float, stop: threading.Event) -> None:
    """Block until every ps accepts connections, so startup order does not matter."""
    deadline = time.monotonic() + timeout
    for index, address in enumerate(role.cluster["ps"]):
        host, port = address.rsplit(":", 1)
        reported = False
        while not stop.is_set():
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
                break
            except OSError:
                if not reported:
                    log.info("waiting_for_ps", task=role.name, ps=f"ps/{index}", address=address,
                             timeout_seconds=timeout)
                    reported = True
            if time.monotonic() > deadline:
                raise ClusterFailure(f"ps/{index} at {address} did not answer within "
                                     f"{timeout:g} s")
            time.sleep(0.2)


def train_worker(role: Role, config: Config, stop: threading.Event, timeout: float) -> int:
    """One worker's share of the training, until the global step reaches ``config.steps``."""
    cluster = v1.train.ClusterSpec(role.cluster)
    server = start_server(role)
    wait_for_ps(role, timeout, stop)
    if stop.is_set():  # a signal while it waited
        return 0
    dataset = dataset_for(config)
    device = v1.train.replica_device_setter(worker_device=f"/job:worker/task:{role.task}",
                                            cluster=cluster)
    spec = models.MODELS[config.model]
    graph = models.build_training_graph(spec, dataset, config.seed, device=device)
    model = contract.read_training(graph)
    # The topology's rate is this run's, fed with every step; the graph (and every export of
    # it) keeps the model's own.
    workers = len(role.cluster["worker"])
    rate = models.learning_rate_feed(graph, spec.replica_learning_rate(workers))
    session_config = v1.ConfigProto(
        # see only the ps tasks and itself: another worker's death must not block this one
        device_filters=["/job:ps", f"/job:worker/task:{role.task}"],
        operation_timeout_in_ms=int(timeout * 1000))  # a lost ps is an error, not a hang
    with graph.as_default():
        manager = v1.train.SessionManager(ready_op=v1.report_uninitialized_variables(),
                                          graph=graph, recovery_wait_secs=0.2)  # not 30 s
        init = v1.global_variables_initializer()
    try:
        if role.is_chief:
            return _chief(role, config, stop, server, manager, init, graph, model,
                          session_config, dataset, rate)
        try:
            session = manager.wait_for_session(server.target, config=session_config,
                                               max_wait_secs=timeout)
        except tf.errors.DeadlineExceededError:  # how TF says the wait ran out
            session = None
        if session is None:
            raise ClusterFailure(f"the chief (worker/0) did not initialize the variables within "
                                 f"{timeout:g} s")
        log.info("worker_joined", task=role.name, step=int(session.run(model.global_step)),
                 learning_rate=applied_rate(session, model, rate))
        watch = ChiefWatch(role.cluster["worker"][0])
        try:
            step = _train(session, model, dataset, config, stop, rate, lambda step: _await_chief(
                watch, role, session, model, config, stop, timeout, step))
        finally:
            watch.close()
        log.info("training_finished", task=role.name, step=step,
                 reason="signal" if stop.is_set() else "steps_reached")
        return step
    except LOST as err:
        log.error("cluster_lost", task=role.name, error=type(err).__name__, message=err.message)
        raise ClusterFailure(f"{role.name} lost the cluster: {_cause(err.message, role)}: "
                             f"{type(err).__name__}") from None


class ChiefWatch:
    """Whether the chief's server answers, looked at on a thread every ``CHIEF_CHECK`` seconds.
    Only the chief publishes: a worker that trained on without it ran to --steps and exited 0,
    and none of its steps past the chief's last commit was ever published."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.answers = threading.Event()
        self.answers.set()  # it initialized the variables a moment ago
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="chief-watch", daemon=True).start()

    def _watch(self) -> None:
        host, port = self.address.rsplit(":", 1)
        while not self._closed.wait(CHIEF_CHECK):
            try:  # a dead chief's port refuses at once; a lost machine's times out
                socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
                self.answers.set()
            except OSError:
                self.answers.clear()

    def close(self) -> None:
        self._closed.set()


def _await_chief(watch: ChiefWatch, role: Role, session, model, config: Config,
                 stop: threading.Event, timeout: float, step: int) -> None:
    """Before each step of a non-chief worker: while the chief does not answer, train no step
    and wait for it (a restarted chief resumes from the newest commit), up to ``timeout``; then
    ClusterFailure. A chief gone once the target is reached has simply finished."""
    if watch.answers.is_set() or step >= config.steps:
        return
    committed = layout.latest_checkpoint(config.export_dir)  # if this worker sees the dir
    log.warning("chief_lost", task=role.name, chief="worker/0", address=watch.address, step=step,
                steps_since_commit=None if committed is None else step - committed.step,
                timeout_seconds=timeout)
    lost = time.monotonic()
    while not watch.answers.wait(WAIT_CHECK):
        now = int(session.run(model.global_step))  # a lost ps raises here, as in a step
        if stop.is_set() or now >= config.steps:
            return
        waited = time.monotonic() - lost
        if waited > timeout:
            log.error("cluster_lost", task=role.name, error="chief_lost", step=now,
                      waited_seconds=round(waited, 1))
            raise ClusterFailure(
                f"{role.name} lost the chief (worker/0 at {watch.address}): no answer for "
                f"{timeout:g} s; training stopped at step {now}, and only the chief publishes")
    log.info("chief_returned", task=role.name, step=int(session.run(model.global_step)),
             lost_at_step=step, paused_seconds=round(time.monotonic() - lost, 2))


def _cause(message: str, role: Role) -> str:
    """Which task was lost, and how, from a TF error's text, which varies: e.g. "ps/0
    (recvmsg:Connection reset by peer)". The text also names this task: skip it."""
    tasks = [f"{job}/{task}" for job, task in
             re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", message)]
    others = sorted({t for t in tasks if t != role.name}, key=lambda t: not t.startswith("ps/"))
    detail = re.search(r'grpc_message:"([^"]*)"', message)
    lost = others[0] if others else "a task"
    return f"{lost} ({detail.group(1)})" if detail else lost


def applied_rate(session, model, rate: dict) -> float:
    """The rate this worker's steps apply: its update ops' rate input, evaluated with the feed
    its steps carry. Read from the graph, so a graph that ignored the feed would show here."""
    return float(session.run(models.applied_learning_rates(model.train_op), rate)[0])


def _chief(role, config, stop, server, manager, init, graph, model, session_config, dataset,
           rate):
    clean(config.export_dir)
    publisher = publisher_for(config, graph)
    restored = {}

    def init_or_restore(session) -> None:
        """The newest committed checkpoint, or fresh variables: the ps may hold newer values
        from before a crash, but only a commit counts."""
        restored["step"] = publisher.restore_latest(session)
        if restored["step"] is None:
            session.run(init)

    session = manager.prepare_session(server.target, init_fn=init_or_restore,
                                      config=session_config)
    step = log_start(config, restored["step"], task=role.name,
                     workers=len(role.cluster["worker"]), ps=len(role.cluster["ps"]),
                     learning_rate=applied_rate(session, model, rate))
    schedule = Schedule(publisher, session, serving_for(config), config, start=step)
    step = _train(session, model, dataset, config, stop, rate, schedule.due)
    schedule.final(step)
    log.info("training_finished", task=role.name, step=step,
             reason="signal" if stop.is_set() else "steps_reached")
    return step


def run_retrying(session, fetches, feeds: dict | None, step: int):
    """``session.run``, tried again when TF aborts it. TF defines AbortedError as retryable (a
    concurrency conflict; under load, e.g. a RecvTensor that gRPC delivered twice) and its
    MonitoredSession recovers from it; one aborted step of asynchronous SGD loses nothing. Past
    ``ABORTS_IN_A_ROW`` it is raised: then the cluster is lost, not busy."""
    for attempt in range(1, ABORTS_IN_A_ROW + 1):
        try:
            return session.run(fetches, feeds)
        except tf.errors.AbortedError as err:
            if attempt == ABORTS_IN_A_ROW:
                raise
            log.warning("run_aborted", step=step, attempt=attempt,
                        message=err.message.splitlines()[0][:200])


def _train(session, model, dataset, config: Config, stop: threading.Event, rate: dict,
           at_step=lambda step: None) -> int:
    """Steps until the global step, which every worker advances, reaches the target; each step
    is fed this run's ``rate``."""
    logged = step = int(session.run(model.global_step))
    while not stop.is_set():
        at_step(step)
        if step >= config.steps:
            break
        features, labels = dataset.batch(step)
        metrics, _ = run_retrying(session, [model.metrics, model.train_op],
                                  {model.features: features, model.labels: labels, **rate}, step)
        step = int(run_retrying(session, model.global_step, None, step))
        every = config.log_every_epochs * dataset.steps_per_epoch
        if step // every > logged // every:
            logged = step
            log.info("train_progress", step=step, **{k: float(v) for k, v in metrics.items()})
    return step
