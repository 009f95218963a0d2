{#- netlog in the capture qubes' template:
    sudo qubesctl --skip-dom0 --targets=debian-13-xfce state.sls qubes.monitor.netlog-template
    tcpdump from the distribution; the capture and retention scripts; units
    that start only where `qvm-service <qube> netpcap on`; /var/log/netpcap
    kept on the qube's private volume across reboots (bind-dirs). -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}
{%- set root = sysmon.root %}

{%- if sysmon.install_packages %}
netlog-packages:
  pkg.installed:
    - pkgs:
      - tcpdump
{%- endif %}

{%- for script in ['netpcap-capture', 'netpcap-prune'] %}
netlog-{{ script }}:
  file.managed:
    - name: {{ root }}/usr/lib/netlog/{{ script }}
    - source: salt://qubes/monitor/files/netlog/{{ script }}
    - mode: '0755'
    - makedirs: true
{%- endfor %}

netlog-config:
  file.managed:
    - name: {{ root }}/etc/netlog/netpcap.conf
    - mode: '0644'
    - makedirs: true
    - contents: |
        # netlog capture settings (salt: qubes.monitor.netlog-template).
        # Override per qube in /rw/config/netlog/netpcap.conf.
        NETPCAP_DIR=/var/log/netpcap
        NETPCAP_ROTATE_SECONDS={{ sysmon.netlog_rotate_seconds }}
        NETPCAP_KEEP_FILES={{ sysmon.netlog_keep_files }}
        NETPCAP_SNAPLEN=96
        NETPCAP_INTERFACE=any

netlog-filter-example:
  file.managed:
    - name: {{ root }}/etc/netlog/netpcap.filter.example
    - source: salt://qubes/monitor/files/netlog/netpcap.filter.example
    - mode: '0644'
    - makedirs: true

netlog-persist:
  file.managed:
    - name: {{ root }}/etc/qubes-bind-dirs.d/50_netlog.conf
    - mode: '0644'
    - makedirs: true
    - contents: |
        # Captures survive a reboot of the network qube, until the nightly
        # backup ships them (docs/netlog.md).
        binds+=( '/var/log/netpcap' )

{%- for unit in ['netpcap.service', 'netpcap-prune.service', 'netpcap-prune.timer'] %}
netlog-unit-{{ unit }}:
  file.managed:
    - name: {{ root }}/usr/lib/systemd/system/{{ unit }}
    - source: salt://qubes/monitor/files/systemd/{{ unit }}
    - mode: '0644'
    - makedirs: true
{%- endfor %}

{%- if sysmon.enable_unit %}
netlog-units-enabled:
  service.enabled:
    - names:
      - netpcap.service
      - netpcap-prune.timer
{%- endif %}
