"""Long fuzz run of the websocket frame parser, message assembler, handshake
parser and reply parser: every input must end in data or in alien.py's own
exception type (AlienError), never in another exception.

    python3 fuzz/fuzz_websocket.py --count 1000000 [--seed N]

Inputs are a mix of random bytes, valid frame sequences and mutations of valid
frames/handshakes (bit flips, truncation, splicing, length-field extremes)."""
import argparse
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import alien  # noqa: E402

KEY = 'dGhlIHNhbXBsZSBub25jZQ=='
GOOD_HANDSHAKE = ('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                  'Sec-WebSocket-Accept: %s' % alien.ws_accept_key(KEY)).encode()


def frame(rng, opcode=None, payload=None, fin=None):
    opcode = rng.choice([0, 1, 2, 8, 9, 10]) if opcode is None else opcode
    payload = rng.randbytes(rng.choice([0, 1, 5, 125, 126, 300, 70000])) if payload is None else payload
    if opcode >= 8:
        payload = payload[:125]
    fin = (rng.random() < 0.7 or opcode >= 8) if fin is None else fin
    n = len(payload)
    head = bytearray([(0x80 if fin else 0) | opcode])
    if n < 126:
        head.append(n)
    elif n < 65536:
        head.append(126)
        head += struct.pack('!H', n)
    else:
        head.append(127)
        head += struct.pack('!Q', n)
    return bytes(head) + payload


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if not data or choice < 0.2:
            data += rng.randbytes(rng.randint(1, 16))
        elif choice < 0.5:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif choice < 0.65:
            del data[rng.randrange(len(data)):]
        elif choice < 0.8 and len(data) > 2:
            # length-field extremes
            data[1] = (data[1] & 0x80) | rng.choice([125, 126, 127])
            data[2:2] = rng.choice([b'\xff\xff', b'\x7f' + b'\xff' * 7, b'\x40' + b'\x00' * 7, b'\x00\x01'])
        else:
            i = rng.randrange(len(data))
            data[i:i] = rng.randbytes(rng.randint(1, 8))
    return bytes(data)


def one_input(rng):
    kind = rng.random()
    if kind < 0.15:
        return 'frames', rng.randbytes(rng.randint(0, 64))
    if kind < 0.55:
        seq = b''.join(frame(rng) for _ in range(rng.randint(1, 5)))
        return 'frames', mutate(rng, seq) if rng.random() < 0.7 else seq
    if kind < 0.75:
        return 'handshake', mutate(rng, GOOD_HANDSHAKE)
    if kind < 0.9:
        text = rng.choice(['{"metadata": {"exitcode": "0"}, "results": [{"message": "x"}]}',
                           '{"metadata": {"exitcode": "2", "error": "e"}, "results": []}'])
        return 'reply', mutate(rng, text.encode())
    return 'frames', frame(rng, 1, rng.randbytes(rng.randint(0, 200)))


def check(kind, data, rng):
    try:
        if kind == 'frames':
            asm = alien.MessageAssembler(max_size=1 << 20)
            step = rng.choice([1, 7, 64, len(data) or 1]) if len(data) < 4096 else 65536
            for i in range(0, len(data), step):
                asm.feed(data[i:i + step])
                while asm.next_event() is not None:
                    pass
        elif kind == 'handshake':
            alien.parse_handshake_response(data, KEY)
        else:
            alien.reply_to_result(*alien.parse_reply(data.decode('utf-8', 'replace')))
    except alien.AlienError:
        return 'error'
    return 'data'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--count', type=int, default=1000000)
    ap.add_argument('--seed', type=int, default=int(time.time()))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    if not hasattr(rng, 'randbytes'):  # Python < 3.9
        rng.randbytes = lambda n: bytes(rng.getrandbits(8) for _ in range(n))
    counts = {'data': 0, 'error': 0}
    t0 = time.time()
    for i in range(args.count):
        kind, data = one_input(rng)
        try:
            counts[check(kind, data, rng)] += 1
        except Exception as e:  # a crash: report the reproducer
            print('CRASH on input %d (seed %d, %s): %r -> %s: %s' % (i, args.seed, kind, data[:200], type(e).__name__, e))
            return 1
    print('fuzzed %d inputs in %.0f s (seed %d): %d ended in data, %d in AlienError, 0 crashes'
          % (args.count, time.time() - t0, args.seed, counts['data'], counts['error']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
