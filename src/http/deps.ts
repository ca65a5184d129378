import type { PullThrough } from '../registry/pullthrough.js';
import type { RegistryService } from '../registry/service.js';

/** What /v2 handlers work with: local registry operations and the pull-through layer. */
export interface Deps {
  svc: RegistryService;
  pull: PullThrough;
}
