"""A TCP delay relay: a wide-area network on loopback, with no root rights or
kernel modules (no netem).

Every chunk read on one side is written to the other side DELAY seconds after it
arrived, in both directions and in order: a connection through the relay sees a
round-trip time of 2 x DELAY more than without it (bandwidth is not limited).
The test grid's WAN mode (``grid.start(workdir, delay_ms=25)``) puts one in front
of the service and one in front of each storage element; the gfal benchmark puts
one in front of its xrootd.

    port, proc = relay.start(upstream_port, delay_seconds)   # a relay subprocess
    python3 -m testgrid.relay LISTEN_PORT UPSTREAM_PORT DELAY_SECONDS  # the same, by hand

LISTEN_PORT 0 picks a free port; the port is written on stdout once listening.
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def serve(listen_port, upstream_port, delay, host='127.0.0.1', ready=None):
    """Run the relay until killed; ready(port) is called once it listens."""
    import asyncio

    async def pump(reader, writer):
        queue = asyncio.Queue()
        loop = asyncio.get_event_loop()

        async def deliver():
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            # the end of the stream is delayed like the data: half-close, the
            # other direction may still be busy
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except OSError:
                pass

        task = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break
                queue.put_nowait((loop.time() + delay, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait((loop.time() + delay, None))
        try:
            await task
        except (ConnectionError, OSError):
            pass

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(host, upstream_port)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(pump(client_reader, up_writer), pump(up_reader, client_writer))
        finally:
            for w in (up_writer, client_writer):
                try:
                    w.close()
                except OSError:
                    pass

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(asyncio.start_server(handle, host, listen_port))
    if ready is not None:
        ready(server.sockets[0].getsockname()[1])
    try:
        loop.run_forever()
    finally:
        server.close()


def start(upstream_port, delay, listen_port=0, log=None):
    """A relay subprocess in front of 127.0.0.1:upstream_port -> (its port, Popen)."""
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    proc = subprocess.Popen([sys.executable, '-m', 'testgrid.relay', str(listen_port), str(upstream_port),
                             repr(float(delay))], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=log or subprocess.DEVNULL, start_new_session=True, close_fds=True, env=env)
    line = proc.stdout.readline()
    proc.stdout.close()
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError('delay relay did not start (in front of port %d)' % upstream_port)
    return int(line), proc


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        sys.stderr.write('usage: python3 -m testgrid.relay LISTEN_PORT UPSTREAM_PORT DELAY_SECONDS\n')
        return 2
    # started from a process where gfal2/XRootD blocked SIGTERM & co.: the mask is inherited
    import signal
    signal.pthread_sigmask(signal.SIG_SETMASK, [])

    def ready(port):
        sys.stdout.write('%d\n' % port)
        sys.stdout.flush()
    serve(int(argv[0]), int(argv[1]), float(argv[2]), ready=ready)
    return 0


if __name__ == '__main__':
    sys.exit(main())
