import type { PullThrough } from '../registry/pullthrough.js';
import type { RegistryService } from '../registry/service.js';
import type { AccessControl } from './auth.js';
import type { SmallBlobCache } from './smallblobs.js';

/** What /v2 handlers work with: local registry operations and the pull-through layer. */
export interface Deps {
  svc: RegistryService;
  pull: PullThrough;
  /** null when the config has no `auth` section (open registry). */
  access: AccessControl | null;
  /**
   * Called with the body size of each complete blob GET, where it came from, and the
   * path's upstream (`local`: none); metrics and status.
   */
  onBlobServed?: (source: 'disk' | 'fill', bytes: number, upstream: string) => void;
  /** Small blob bytes by digest (absent: every GET reads the file). */
  smallBlobs?: SmallBlobCache;
}
