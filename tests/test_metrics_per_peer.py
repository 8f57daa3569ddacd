import asyncio
from ispd.metrics.service import MetricsService, MAX_CONNECTIONS_PER_PEER

class W:
    def __init__(self, peer): self.peer, self.out = peer, b""
    def get_extra_info(self, k): return (self.peer, 1234, 0, 0)
    def write(self, b): self.out += b
    async def drain(self): pass
    def close(self): pass

def test_one_64_holds_at_most_the_per_peer_cap():
    async def main():
        svc = MetricsService.__new__(MetricsService)
        svc._handlers, svc._per_peer = set(), {}
        readers = [asyncio.StreamReader() for _ in range(MAX_CONNECTIONS_PER_PEER + 1)]
        writers = [W(f"2001:db8:1:2::{i + 1:x}") for i in range(len(readers))]
        tasks = [asyncio.create_task(svc._handle(r, w)) for r, w in zip(readers, writers)]
        await asyncio.sleep(0.05)
        refused = [w for w in writers if b"503" in w.out]
        for t in tasks: t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(refused)
    assert asyncio.run(main()) == 1  # the ninth connection from one /64 is refused
