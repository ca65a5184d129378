import test from 'ava';
import { LRUCache } from 'lru-cache';
import { countBounded } from '../../src/lru.js';

test('countBounded keeps at most `count` entries and drops the least recently used', (t) => {
  const lru = new LRUCache<string, number>({ ...countBounded(3) });
  for (const k of ['a', 'b', 'c']) lru.set(k, 1);
  lru.get('a'); // now b is the least recently used
  lru.set('d', 1);
  t.is(lru.size, 3);
  t.deepEqual([...lru.keys()].sort(), ['a', 'c', 'd']);
  for (let i = 0; i < 1000; i++) lru.set(`k${i}`, i);
  t.is(lru.size, 3);
  t.deepEqual([...lru.keys()], ['k999', 'k998', 'k997']);
});

test('countBounded works with a ttl (the login limiter, htpasswd cache)', (t) => {
  const lru = new LRUCache<string, number>({ ...countBounded(2), ttl: 60_000 });
  lru.set('a', 1);
  lru.set('b', 2);
  lru.set('c', 3);
  t.is(lru.size, 2);
  t.is(lru.get('a'), undefined);
  t.is(lru.get('c'), 3);
});
