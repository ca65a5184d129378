/**
 * lru-cache options for a cache bounded by entry count whose storage grows as it fills.
 *
 * With `max: N`, lru-cache allocates its index arrays for N entries up front (keys,
 * values, two link arrays, a free list, and with `ttl` two more arrays of N numbers):
 * a 100,000-entry limiter cost ~3.5 MiB of a just-started process holding nothing
 * (issue #14 item 3). Counting every entry as size 1 against `maxSize` keeps the same
 * bound (least recently used entries are dropped past `count`) with arrays that grow
 * only as entries arrive.
 */
export function countBounded(count: number): { maxSize: number; sizeCalculation: () => number } {
  return { maxSize: count, sizeCalculation: () => 1 };
}
